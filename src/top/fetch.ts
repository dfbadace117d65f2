// `pgbudget top`'s reads of the admin API: GET /status (JSON) and GET
// /metrics (Prometheus text), with the bearer token when there is one.
// Whatever goes wrong comes back as one line fit for the screen.
import type { ProxySnapshot } from '../types/snapshot.js';
import { parseExposition, Samples } from './exposition.js';

export interface AdminAnswer {
  status: ProxySnapshot;
  /** The scrape of /metrics, or null with `metricsError` when it could not be read. */
  metrics: Samples | null;
  metricsError: string | null;
  /** When the answers came (ms). */
  atMs: number;
}

/** An answer that is not what pgbudget's admin API gives; its message is the screen's error line. */
export class AdminError extends Error {}

export interface AdminTarget {
  /** The admin API's base, e.g. http://127.0.0.1:9187/ */
  base: URL;
  token: string | null;
  timeoutMs: number;
}

/** Reads /status and /metrics at once; throws AdminError when /status cannot be had. */
export async function readAdmin(target: AdminTarget): Promise<AdminAnswer> {
  const [status, metrics] = await Promise.allSettled([get(target, 'status'), get(target, 'metrics')]);
  if (status.status === 'rejected') throw status.reason;
  let snapshot: unknown;
  try {
    snapshot = JSON.parse(status.value);
  } catch {
    throw new AdminError(`${describe(target, 'status')} did not answer JSON: is this pgbudget's admin address?`);
  }
  if (!isSnapshot(snapshot)) throw new AdminError(`${describe(target, 'status')} is not pgbudget's /status`);
  const atMs = Date.now();
  if (metrics.status === 'rejected') return { status: snapshot, metrics: null, metricsError: (metrics.reason as Error).message, atMs };
  return { status: snapshot, metrics: new Samples(parseExposition(metrics.value).samples), metricsError: null, atMs };
}

function describe(target: AdminTarget, route: string): string {
  return new URL(route, target.base).href;
}

async function get(target: AdminTarget, route: string): Promise<string> {
  const url = describe(target, route);
  let res: Response;
  try {
    res = await fetch(url, {
      headers: target.token === null ? {} : { authorization: `Bearer ${target.token}` },
      signal: AbortSignal.timeout(target.timeoutMs),
    });
  } catch (err) {
    throw new AdminError(`admin API unreachable: ${url}: ${causeOf(err, target.timeoutMs)}`);
  }
  const body = await res.text().catch(() => '');
  if (res.status === 401) {
    const hint = target.token === null ? ' (give the token: --token-env NAME or --token-file PATH)' : '';
    throw new AdminError(`${url}: 401 ${errorText(body) ?? 'unauthorized'}${hint}`);
  }
  if (!res.ok) throw new AdminError(`${url}: ${res.status} ${errorText(body) ?? res.statusText}`);
  return body;
}

/** The `error` of a JSON error body, as the admin server sends them. */
function errorText(body: string): string | null {
  try {
    const e = (JSON.parse(body) as { error?: unknown }).error;
    return typeof e === 'string' ? e : null;
  } catch {
    return null;
  }
}

/** What fetch's "fetch failed" hides: the socket's error code, or the timeout. */
function causeOf(err: unknown, timeoutMs: number): string {
  const e = err as { name?: string; message?: string; cause?: { code?: string; message?: string } };
  if (e?.name === 'TimeoutError' || e?.name === 'AbortError') return `no answer within ${timeoutMs} ms`;
  return e?.cause?.code ?? e?.cause?.message ?? e?.message ?? String(err);
}

function isSnapshot(x: unknown): x is ProxySnapshot {
  const s = x as ProxySnapshot;
  return typeof s === 'object' && s !== null && Array.isArray(s.services) && typeof s.upstream === 'object' && s.upstream !== null;
}
