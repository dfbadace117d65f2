// Which server connections can serve a client: the same user, database and
// startup parameters. The key is a string, so the pool and the scheduler
// compare and store it without knowing what is in it.

/**
 * Server connections are interchangeable only for the same user, database
 * and startup parameters (search_path, TimeZone, DateStyle, client_encoding,
 * options…): those are part of the key, so whichever connection a client
 * gets already has its settings, and the ParameterStatus it saw at login.
 */
export function poolKey(user: string, database: string, params: Record<string, string> = {}): string {
  const extra = Object.keys(params)
    .filter((k) => !NOT_IN_KEY.has(k) && (k !== 'replication' || isReplication(params)))
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
