// Which server connections can serve a client: the same user, database and
// startup parameters, except those applied per checkout (settings.ts). The
// key is a string, so the pool and the scheduler compare and store it
// without knowing what is in it.
import { perCheckoutName } from './settings.js';

/**
 * Server connections are interchangeable only for the same user, database
 * and startup parameters that are not applied per checkout (`options`, other
 * GUCs, replication): those are part of the key, and the connection logs in
 * with them. application_name, TimeZone, DateStyle, search_path… are not:
 * whichever connection a client gets, they are set for it (settings.ts).
 */
export function poolKey(user: string, database: string, params: Record<string, string> = {}): string {
  // A replication connection logs in with everything: a physical one takes no SQL to set anything later.
  if (isReplication(params)) return welcomeKey(user, database, params);
  return keyOf(user, database, params, (k) => perCheckoutName(k) === undefined);
}

/**
 * The key of the welcome a client gets at login (the server's
 * ParameterStatus values for its startup parameters): every parameter but
 * application_name, which each client's welcome carries as its own.
 */
export function welcomeKey(user: string, database: string, params: Record<string, string> = {}): string {
  return keyOf(user, database, params, () => true);
}

function keyOf(user: string, database: string, params: Record<string, string>, keep: (name: string) => boolean): string {
  const extra = Object.keys(params)
    .filter((k) => !NOT_IN_KEY.has(k) && keep(k) && (k !== 'replication' || isReplication(params)))
    .sort()
    .map((k) => `${k}\u0001${params[k]}`);
  return [user, database, ...extra].join('\u0000');
}

/** Startup parameters that are not passed on: identity, and what the proxy sets itself. */
const NOT_IN_KEY = new Set(['user', 'database', 'application_name']);

/**
 * A replication connection (`replication` true or `database`, in any of the
 * spellings PostgreSQL takes for a boolean): it is passed on to the server
 * login, so such a connection has a key of its own and serves nobody else.
 * `replication=false` (or off, no, 0) is an ordinary connection.
 */
export function isReplication(params: Readonly<Record<string, string>>): boolean {
  const v = params.replication;
  return v !== undefined && !FALSE_WORDS.has(v.toLowerCase());
}

const FALSE_WORDS = new Set(['false', 'off', 'no', '0', 'f', 'n']);

export function parsePoolKey(key: string): { user: string; database: string; params: Record<string, string> } {
  const [user, database, ...extra] = key.split('\u0000');
  const params: Record<string, string> = {};
  for (const kv of extra) {
    const i = kv.indexOf('\u0001');
    params[kv.slice(0, i)] = kv.slice(i + 1);
  }
  return { user, database, params };
}
