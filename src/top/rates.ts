// What `pgbudget top` reads from two scrapes of /metrics a refresh apart:
// per service, the queue wait's p50 and p99 (from the histogram's bucket
// increases, as histogram_quantile reads them), queue timeouts and client
// connection attempts per second, and the surge flag. A metric the proxy
// does not export (an older pgbudget) reads as null, shown as "-".
import { Samples } from './exposition.js';

export const WAIT_HISTOGRAM = 'pgbudget_queue_wait_seconds';
export const REJECTIONS = 'pgbudget_rejections_total';
export const CONNECTION_ATTEMPTS = 'pgbudget_client_connection_attempts_total';
export const SURGE = 'pgbudget_service_surge';

/** One scrape of /metrics, and when it was taken (ms). */
export interface Scrape {
  samples: Samples;
  atMs: number;
}

/** A quantile of the queue wait, in seconds; `beyond`: above the highest finite bucket, which `seconds` then is. */
export interface WaitQuantile {
  seconds: number;
  beyond: boolean;
}

export interface ServiceRates {
  p50: WaitQuantile | null;
  p99: WaitQuantile | null;
  timeoutsPerSecond: number | null;
  connectsPerSecond: number | null;
  surge: boolean | null;
}

/** A cumulative histogram bucket: observations ≤ `le`. */
export interface Bucket {
  le: number;
  count: number;
}

/**
 * The q-quantile of cumulative buckets (sorted by `le`, the last +Inf), as
 * Prometheus' histogram_quantile estimates it: linear within the bucket
 * the rank falls in, the first bucket starting at 0. Null with no
 * observations.
 */
export function histogramQuantile(q: number, buckets: readonly Bucket[]): WaitQuantile | null {
  const n = buckets.length;
  if (n < 2 || buckets[n - 1].le !== Infinity) return null;
  const total = buckets[n - 1].count;
  if (!(total > 0)) return null;
  const rank = q * total;
  let b = buckets.findIndex((bucket) => bucket.count >= rank);
  if (b === -1) b = n - 1;
  if (b === n - 1) return { seconds: buckets[n - 2].le, beyond: true };
  const start = b === 0 ? 0 : buckets[b - 1].le;
  const below = b === 0 ? 0 : buckets[b - 1].count;
  const inBucket = buckets[b].count - below;
  if (inBucket <= 0 || start >= buckets[b].le) return { seconds: buckets[b].le, beyond: false };
  // Rounding can carry start + width × 1 past the bound (0.001 + 0.009 = 0.010000000000000002): never beyond it.
  return { seconds: Math.min(buckets[b].le, start + (buckets[b].le - start) * ((rank - below) / inBucket)), beyond: false };
}

/** The wait histogram's buckets of one service, sorted by `le`. */
export function waitBuckets(samples: Samples, service: string): Bucket[] {
  return samples
    .all(`${WAIT_HISTOGRAM}_bucket`, { service })
    .map((s) => ({ le: s.labels.le === '+Inf' ? Infinity : Number(s.labels.le), count: s.value }))
    .filter((b) => !Number.isNaN(b.le))
    .sort((a, b) => a.le - b.le);
}

/**
 * The observations between two scrapes: per bucket, now less then. When
 * nothing was observed in between (or the buckets changed, or a counter
 * went back: a restart), the cumulative buckets stand in.
 */
export function bucketIncrease(before: readonly Bucket[] | null, now: readonly Bucket[]): readonly Bucket[] {
  if (before === null || before.length !== now.length || before.some((b, i) => b.le !== now[i].le)) return now;
  const increase = now.map((b, i) => ({ le: b.le, count: b.count - before[i].count }));
  if (increase.some((b) => b.count < 0)) return now;
  return increase[increase.length - 1]?.count > 0 ? increase : now;
}

/** A counter's increase per second between two scrapes; a counter that went back (a restart) counts from 0. */
export function perSecond(before: number | null, now: number | null, seconds: number): number | null {
  if (before === null || now === null || !(seconds > 0)) return null;
  return (now >= before ? now - before : now) / seconds;
}

/** The rates of `service` between `before` (null on the first refresh) and `now`. */
export function serviceRates(before: Scrape | null, now: Scrape, service: string): ServiceRates {
  const seconds = before === null ? 0 : (now.atMs - before.atMs) / 1000;
  const counter = (name: string, labels: Record<string, string>) =>
    perSecond(before?.samples.value(name, labels) ?? null, now.samples.value(name, labels), seconds);
  const buckets = waitBuckets(now.samples, service);
  const waits = bucketIncrease(before === null ? null : waitBuckets(before.samples, service), buckets);
  const surge = now.samples.value(SURGE, { service });
  return {
    p50: histogramQuantile(0.5, waits),
    p99: histogramQuantile(0.99, waits),
    timeoutsPerSecond: counter(REJECTIONS, { service, reason: 'queue_timeout' }),
    connectsPerSecond: counter(CONNECTION_ATTEMPTS, { service }),
    surge: surge === null ? null : surge > 0,
  };
}
