// auth.query: a role's password looked up in the database itself, as
// PgBouncer's auth_query does. The lookup is a service of its own with a
// budget of one server connection, so it waits in the same queues and is
// held to the same cap as everyone else's connections, and it shows in
// /status and the metrics under its own name.
import type { AuthQueryConfig, Config, ServiceConfig } from '../types/config.js';
import type { ServerConnection } from './connection.js';
import { poolKey } from './poolKey.js';
import type { RejectedBecause } from './pool.js';

/** The lookup's service name; no configured service may take it (config/schema.ts). */
export const AUTH_QUERY_SERVICE = 'pgbudget:auth_query';

/** The service the lookup runs as, or null when auth.query is not configured. */
export function authQueryService(config: Config): ServiceConfig | null {
  const q = config.auth.query;
  if (!q) return null;
  return {
    name: AUTH_QUERY_SERVICE,
    match: {},
    budget: 1,
    poolMode: 'transaction',
    onSessionState: 'error',
    queue: { maxWaiting: config.maxClients, timeoutMs: config.authTimeoutMs },
    idleInTransactionTimeoutMs: 0,
    queryTimeoutMs: 0,
    auth: { method: 'trust' },
    maxClients: 0,
    password: q.password,
    passwordEnv: q.passwordEnv,
  };
}

/** What the lookup needs of the pool (server/pool.ts). */
export interface LookupPool {
  acquire(
    service: string,
    key: string,
    handlers: { onAssign(conn: ServerConnection, waitedMs: number): void; onReject(error: Buffer, reason: RejectedBecause): void },
  ): unknown;
  release(conn: ServerConnection, reusable: boolean): void;
}

/** Why a lookup failed: for the log, never for the client (it may name the lookup's internals). */
export class LookupError extends Error {}

/**
 * The stored secret of `user` (a SCRAM verifier or an md5 hash as
 * pg_authid holds it), or null: no such role, no password, or expired.
 */
export function lookUpSecret(pool: LookupPool, q: AuthQueryConfig, user: string): Promise<string | null> {
  return new Promise((resolve, reject) => {
    pool.acquire(AUTH_QUERY_SERVICE, poolKey(q.user, q.database), {
      onAssign: (conn) => {
        conn.rows(q.sql, [user]).then(
          (rows) => {
            pool.release(conn, true);
            if (rows.length > 1) return reject(new LookupError(`auth.query returned ${rows.length} rows for one user`));
            if (rows.length === 1 && rows[0].length < 2) return reject(new LookupError('auth.query must return two columns (name, secret)'));
            resolve(rows.length === 0 ? null : (rows[0][1] ?? null));
          },
          (err: Error) => {
            // An error leaves the connection idle (Sync ran): reusable; a timeout destroyed it.
            pool.release(conn, true);
            reject(new LookupError(`auth.query failed: ${err.message}`));
          },
        );
      },
      onReject: (error, reason) => reject(new LookupError(`auth.query got no server connection (${reason}): ${errorText(error)}`)),
    });
  });
}

/** The M field of an ErrorResponse, for the log. */
function errorText(error: Buffer): string {
  for (let i = 5; i < error.length; ) {
    const type = error[i++];
    const end = error.indexOf(0, i);
    if (type === 0 || end < 0) break;
    if (type === 0x4d) return error.toString('utf8', i, end);
    i = end + 1;
  }
  return 'no message';
}
