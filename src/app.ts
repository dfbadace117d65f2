// Wiring of one running pgbudget: the proxy, its metrics and the admin HTTP
// server. Used by the CLI and by the tests, which start it in-process.
import type { AddressInfo } from 'node:net';
import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { buildAdmin } from './admin/server.js';
import { readAdminGuard, type AdminGuard } from './admin/token.js';
import type { Config } from './types/config.js';
import { Metrics } from './metrics/metrics.js';
import { Proxy } from './proxy/proxy.js';

export interface RunningPgbudget {
  proxy: Proxy;
  metrics: Metrics;
  admin: FastifyInstance;
  address: AddressInfo;
  adminAddress: AddressInfo;
  /** Applies a new, already validated config (the proxy's and the admin token); returns the notes to log. */
  reload(next: Config): string[];
  stop(): Promise<void>;
}

export async function startPgbudget(config: Config, log: Logger): Promise<RunningPgbudget> {
  // Read before anything starts: a token that cannot be read stops the start.
  let guard: AdminGuard = readAdminGuard(config.admin);
  const proxy = new Proxy(config, log);
  const metrics = new Metrics(proxy);
  const admin = buildAdmin(
    {
      snapshot: () => proxy.snapshot(),
      get listening() {
        return proxy.listening;
      },
      upstreamReachable: () => proxy.pool.upstreamReachable(),
    },
    metrics,
    () => guard,
  );
  const address = await proxy.listen();
  try {
    await admin.listen({ host: config.admin.host, port: config.admin.port });
  } catch (err) {
    // Never half started: without its admin address the proxy stops again.
    await proxy.shutdown();
    await admin.close().catch(() => undefined);
    throw new Error(`cannot listen on the admin address ${config.admin.host}:${config.admin.port}: ${(err as Error).message}`);
  }
  const adminAddress = admin.server.address() as AddressInfo;
  return {
    proxy,
    metrics,
    admin,
    address,
    adminAddress,
    reload(next) {
      // Read first: a token that cannot be read keeps the running config whole, the proxy's included.
      let nextGuard: AdminGuard;
      try {
        nextGuard = readAdminGuard(next.admin);
      } catch (err) {
        throw new Error(`reload failed, running config kept: ${(err as Error).message}`);
      }
      const notes = proxy.reload(next);
      guard = nextGuard;
      return notes;
    },
    async stop() {
      await proxy.shutdown();
      await admin.close();
    },
  };
}
