// Admin HTTP: /metrics, /healthz, /readyz, /status. Reads snapshots only.
import Fastify, { type FastifyInstance } from 'fastify';
import type { Metrics } from '../metrics/metrics.js';
import type { ProxySnapshot } from '../types/snapshot.js';

export interface AdminSource {
  snapshot(): ProxySnapshot;
  readonly listening: boolean;
  upstreamReachable(): Promise<boolean>;
}

export function buildAdmin(source: AdminSource, metrics: Metrics): FastifyInstance {
  const app = Fastify({ logger: false });
  app.get('/metrics', async (_req, reply) => {
    reply.header('content-type', metrics.contentType);
    return metrics.render();
  });
  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/readyz', async (_req, reply) => {
    const snap = source.snapshot();
    const checks = {
      listening: source.listening && !snap.shuttingDown,
      config: true,
      upstream: await source.upstreamReachable(),
    };
    const ready = checks.listening && checks.config && checks.upstream;
    reply.code(ready ? 200 : 503);
    return { status: ready ? 'ready' : 'not ready', checks, upstreamError: snap.upstream.lastError };
  });
  app.get('/status', async () => source.snapshot());
  return app;
}
