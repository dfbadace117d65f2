// Admin HTTP: /metrics, /healthz, /readyz, /status. Reads snapshots only.
import Fastify, { type FastifyInstance } from 'fastify';
import type { Metrics } from '../metrics/metrics.js';
import type { ProxySnapshot } from '../types/snapshot.js';
import { bearerToken, isToken, type AdminGuard } from './token.js';

export interface AdminSource {
  snapshot(): ProxySnapshot;
  readonly listening: boolean;
  upstreamReachable(): Promise<boolean>;
}

/** Probes must work without a secret; /metrics too unless metricsNeedToken says otherwise. */
const PROBES = new Set(['/healthz', '/readyz']);

/** `guard()` is asked on every request: a reload replaces the token without a restart. */
export function buildAdmin(source: AdminSource, metrics: Metrics, guard: () => AdminGuard): FastifyInstance {
  const app = Fastify({ logger: false });
  app.addHook('onRequest', async (req, reply) => {
    const { tokenHash, metricsNeedToken } = guard();
    if (tokenHash === null) return;
    // The route matched, not the raw URL: an unknown path (no route) asks for the token too.
    const route = req.routeOptions.url;
    if (route !== undefined && (PROBES.has(route) || (route === '/metrics' && !metricsNeedToken))) return;
    const presented = bearerToken(req.headers.authorization);
    if (presented !== null && isToken(presented, tokenHash)) return;
    reply.code(401).header('www-authenticate', 'Bearer realm="pgbudget"');
    return reply.send({ error: presented === null ? 'a bearer token is required (Authorization: Bearer <token>)' : 'wrong bearer token' });
  });
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
