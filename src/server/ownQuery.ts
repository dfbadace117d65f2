// pgbudget's own statements (auth.query's lookup, the headroom reading). Each
// runs as an internal service with a budget of one server connection, taken
// from the pool as a client's would be: it waits in the same queues, is held
// to the same cap, and shows in /status and the metrics under its own name.
import type { ServiceConfig } from '../types/config.js';
import type { ServerConnection } from './connection.js';
import type { RejectedBecause } from './pool.js';

/** What an own statement needs of the pool (server/pool.ts). */
export interface OwnQueryPool {
  acquire(
    service: string,
    key: string,
    handlers: { onAssign(conn: ServerConnection, waitedMs: number): void; onReject(error: Buffer, reason: RejectedBecause): void },
  ): unknown;
  release(conn: ServerConnection, reusable: boolean): void;
}

/** An internal service: one server connection, nobody matched to it, its own login. */
export function internalService(
  name: string,
  login: { password?: string; passwordEnv?: string },
  queue: ServiceConfig['queue'],
  surge: ServiceConfig['surge'],
): ServiceConfig {
  return {
    name,
    match: {},
    budget: 1,
    poolMode: 'transaction',
    onSessionState: 'error',
    enforce: true,
    queue,
    idleInTransactionTimeoutMs: 0,
    queryTimeoutMs: 0,
    auth: { method: 'trust' },
    surge,
    maxClients: 0,
    password: login.password,
    passwordEnv: login.passwordEnv,
  };
}

/**
 * Runs `sql` with `params` on a server connection of `service` for `key`
 * and resolves with its rows; rejects with an Error whose message starts
 * with `what` (for the log: it may name the statement's internals).
 */
export function ownQuery(pool: OwnQueryPool, what: string, service: string, key: string, sql: string, params: string[]): Promise<(string | null)[][]> {
  return new Promise((resolve, reject) => {
    pool.acquire(service, key, {
      onAssign: (conn) => {
        conn.rows(sql, params).then(
          (rows) => {
            pool.release(conn, true);
            resolve(rows);
          },
          (err: Error) => {
            // An error leaves the connection idle (Sync ran): reusable; a timeout destroyed it.
            pool.release(conn, true);
            reject(new Error(`${what} failed: ${err.message}`));
          },
        );
      },
      onReject: (error, reason) => reject(new Error(`${what} got no server connection (${reason}): ${errorText(error)}`)),
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
