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
    .filter((k) => !NOT_IN_KEY.has(k))
    .sort()
    .map((k) => `${k}\u0001${params[k]}`);
  return [user, database, ...extra].join('\u0000');
}

/** Startup parameters that are not passed on: identity, and what the proxy sets itself. */
const NOT_IN_KEY = new Set(['user', 'database', 'application_name', 'replication']);

export function parsePoolKey(key: string): { user: string; database: string; params: Record<string, string> } {
  const [user, database, ...extra] = key.split('\u0000');
  const params: Record<string, string> = {};
  for (const kv of extra) {
    const i = kv.indexOf('\u0001');
    params[kv.slice(0, i)] = kv.slice(i + 1);
  }
  return { user, database, params };
}
