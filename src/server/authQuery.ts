// auth.query: a role's password looked up in the database itself, as
// PgBouncer's auth_query does. The lookup is an internal service of its own
// (server/ownQuery.ts), so it waits in the same queues and is held to the
// same cap as everyone else's connections, and it shows in /status and the
// metrics under its own name.
import type { AuthQueryConfig, Config, ServiceConfig } from '../types/config.js';
import { poolKey } from './poolKey.js';
import { internalService, ownQuery, type OwnQueryPool } from './ownQuery.js';

/** The lookup's service name; no configured service may take it (config/schema.ts). */
export const AUTH_QUERY_SERVICE = 'pgbudget:auth_query';

/** The service the lookup runs as, or null when auth.query is not configured. */
export function authQueryService(config: Config): ServiceConfig | null {
  const q = config.auth.query;
  if (!q) return null;
  return internalService(AUTH_QUERY_SERVICE, q, { maxWaiting: config.maxClients, timeoutMs: config.authTimeoutMs }, config.surge);
}

/** What the lookup needs of the pool (server/pool.ts). */
export type LookupPool = OwnQueryPool;

/** Why a lookup failed: for the log, never for the client (it may name the lookup's internals). */
export class LookupError extends Error {}

/**
 * The stored secret of `user` (a SCRAM verifier or an md5 hash as
 * pg_authid holds it), or null: no such role, no password, or expired.
 */
export async function lookUpSecret(pool: LookupPool, q: AuthQueryConfig, user: string): Promise<string | null> {
  let rows: (string | null)[][];
  try {
    rows = await ownQuery(pool, 'auth.query', AUTH_QUERY_SERVICE, poolKey(q.user, q.database), q.sql, [user]);
  } catch (err) {
    throw new LookupError((err as Error).message);
  }
  if (rows.length > 1) throw new LookupError(`auth.query returned ${rows.length} rows for one user`);
  if (rows.length === 1 && rows[0].length < 2) throw new LookupError('auth.query must return two columns (name, secret)');
  return rows.length === 0 ? null : (rows[0][1] ?? null);
}
