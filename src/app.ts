// Wiring of one running pgbudget: the proxy, its metrics and the admin HTTP
// server. Used by the CLI and by the tests, which start it in-process.
import type { AddressInfo } from 'node:net';
import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { buildAdmin } from './admin/server.js';
import type { Config } from './types/config.js';
import { Metrics } from './metrics/metrics.js';
import { Proxy } from './proxy/proxy.js';

export interface RunningPgbudget {
  proxy: Proxy;
  metrics: Metrics;
  admin: FastifyInstance;
  address: AddressInfo;
  adminAddress: AddressInfo;
  stop(): Promise<void>;
}

export async function startPgbudget(config: Config, log: Logger): Promise<RunningPgbudget> {
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
    async stop() {
      await proxy.shutdown();
      await admin.close();
    },
  };
}
