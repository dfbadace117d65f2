// `pgbudget top`, without a terminal or a proxy: the frame a fixed snapshot
// gives, column by column at 80 columns and wider; bars that scale with
// budget and waiters; "-" where a metric is absent; the pressing services
// first; and the rates read from two scrapes of /metrics.
import fc from 'fast-check';
import t from 'tap';
import { parseExposition, Samples } from '../../src/top/exposition.js';
import { parseTopArgs } from '../../src/top/main.js';
import { bucketIncrease, histogramQuantile, perSecond, serviceRates, type Bucket, type ServiceRates, type WaitQuantile } from '../../src/top/rates.js';
import { apportion, budgetBar, fmtRate, fmtWait, LEGEND, LEGEND_CLUSTER, renderFrame, sortServices, type Frame, type ViewOptions } from '../../src/top/view.js';
import type { ProxySnapshot, ServiceSnapshot } from '../../src/types/snapshot.js';

/** A service with [active, idle, opening, closing] server connections and `waiting` clients. */
function service(name: string, budget: number, [active, idle, opening = 0, closing = 0]: number[], waiting = 0): ServiceSnapshot {
  return {
    name,
    poolMode: 'transaction',
    budget,
    serverConnections: { active, idle, opening, closing, replication: 0, total: active + idle + opening + closing },
    clients: { connected: active + waiting, waiting },
    oldestWaitSeconds: 0,
    transactions: 0,
    serverConnectErrors: 0,
    serversOpened: 0,
    serversClosed: 0,
    queryTimeouts: 0,
    rejections: {},
    pins: {},
    utilization: budget > 0 ? (active + idle + opening + closing) / budget : 0,
    atBudgetSeconds: 0,
    connectionAttempts: 0,
    connectRatePerSecond: 0,
    connectRateBaselinePerSecond: null,
    clientErrors: {},
    surge: { surging: false, forSeconds: 0, episodes: 0 },
    serverPids: [],
    enforced: true,
    wouldWait: 0,
    wouldReject: {},
    wouldBeWaiting: 0,
  };
}

const snapshot = (services: ServiceSnapshot[], over: Partial<ProxySnapshot> = {}): ProxySnapshot => ({
  upstream: { host: '127.0.0.1', port: 5433, maxConnections: 10, serverConnections: 7, lastError: null, connectErrors: {} },
  database: {
    reading: { maxConnections: 20, superuserReservedConnections: 3, reservedConnections: 0, otherConnections: 2, ageSeconds: 1.2 },
    lastError: null,
    autoCap: false,
  },
  services,
  coordination: null,
  unmatched: { rejections: {}, connectionAttempts: 0, clientErrors: {} },
  shuttingDown: false,
  ...over,
});

const stormRates: ServiceRates = {
  p50: { seconds: 0.52, beyond: false },
  p99: { seconds: 0.98, beyond: false },
  timeoutsPerSecond: 1.5,
  connectsPerSecond: 12,
  surge: true,
};

function frame(over: Partial<Frame> = {}): Frame {
  return {
    admin: 'http://127.0.0.1:9187',
    at: new Date(2024, 0, 1, 12, 34, 56),
    status: snapshot([service('calm', 4, [1, 1]), service('storm', 2, [2, 0], 10), service('a-very-long-service-name', 3, [1, 0, 1])]),
    statusAt: null,
    rates: new Map([
      ['storm', stormRates],
      ['calm', { p50: { seconds: 0, beyond: false }, p99: { seconds: 0.0004, beyond: false }, timeoutsPerSecond: 0, connectsPerSecond: null, surge: false }],
    ]),
    error: null,
    metricsError: null,
    ...over,
  };
}

/** A quantile to the nanosecond, so that float arithmetic compares. */
const ns = (q: WaitQuantile | null) => q && { ...q, seconds: Math.round(q.seconds * 1e9) / 1e9 };
const nsRates = (r: ServiceRates) => ({ ...r, p50: ns(r.p50), p99: ns(r.p99) });

const at80: ViewOptions = { width: 80, height: null, color: false, refreshSeconds: 1 };

t.test('a frame from fixed data, column by column, at 80 columns', async (t) => {
  const lines = renderFrame(frame(), at80);
  t.same(lines, [
    'pgbudget top  http://127.0.0.1:9187                           12:34:56  every 1s',
    'upstream  127.0.0.1:5433  server connections 7 / cap 10  up',
    'database  max_connections 20, 3 reserved, 2 others: room for 15  read 1.2s ago',
    '',
    'SERVICE      BUDGET                 HELD  WAIT    p50    p99  TMO/s CONN/s SURGE',
    'storm        [###]>>>>>>>>>>>>>>     2/2    10  520ms  980ms    1.5     12 SURGE',
    'a-very-long~ [######++++++.....]     2/3     0      -      -      -      -     -',
    'calm         [####====.........]     2/4     0    0ms   <1ms      0      -    no',
    '',
    LEGEND + '   q quits',
  ]);
  for (const l of lines) t.ok(l.length <= 80, `${l.length} columns: ${l}`);
  t.equal(lines[4].length, 80, 'the header fills the 80 columns');
  t.equal(lines[5].length, 80, 'so does a row');
});

t.test('narrower than 80 is taken as 80; wider gives the bar and the names the room', async (t) => {
  t.same(renderFrame(frame(), { ...at80, width: 40 }), renderFrame(frame(), at80));
  const wide = renderFrame(frame(), { ...at80, width: 120 });
  for (const l of wide) t.ok(l.length <= 120, l);
  const calm = wide.find((l) => l.startsWith('calm'))!;
  t.match(calm, /^calm {21}\[#{11}={11}\.{23}\] +2\/4/, 'a 45-cell bar, the long name whole');
  t.ok(wide.some((l) => l.startsWith('a-very-long-service-name [')));
  const huge = renderFrame(frame(), { ...at80, width: 400 });
  const row = huge.find((l) => l.startsWith('calm'))!;
  t.equal(row.length, 24 + 1 + 62 + 48, 'the bar stops growing at 60 cells');
});

t.test('"-" for every metric that is absent', async (t) => {
  const lines = renderFrame(frame({ rates: new Map() }), at80);
  t.equal(lines[5], 'storm        [###]>>>>>>>>>>>>>>     2/2    10      -      -      -      -     -');
  const noSurgeMetric = renderFrame(frame({ rates: new Map([['storm', { ...stormRates, surge: null, connectsPerSecond: null }]]) }), at80);
  t.equal(noSurgeMetric[5], 'storm        [###]>>>>>>>>>>>>>>     2/2    10  520ms  980ms    1.5      -     -');
  const noDb = renderFrame(frame({ status: snapshot([service('a', 1, [0, 0])], { database: null }) }), at80);
  t.equal(noDb[2], 'database  - (no headroom readings: headroom.user is not set)');
});

t.test('the pressing services first: most waiting, then fullest, then by name', async (t) => {
  const sorted = sortServices([
    service('b-half', 4, [2, 0]),
    service('a-half', 2, [1, 0]),
    service('full', 2, [1, 1]),
    service('waits-1', 2, [2, 0], 1),
    service('waits-9', 8, [8, 0], 9),
    service('empty', 3, [0, 0]),
  ]);
  t.same(sorted.map((s) => s.name), ['waits-9', 'waits-1', 'full', 'a-half', 'b-half', 'empty']);
});

t.test('budget bars scale', async (t) => {
  const bar = (active: number, idle: number, waiting: number, budget: number, changing = 0) => {
    const b = budgetBar({ active, changing, idle, waiting, budget }, 16);
    return `[${b.inside}]${b.beyond}`;
  };
  t.equal(bar(0, 0, 0, 4), '[................]', 'empty');
  t.equal(bar(2, 0, 0, 4), '[########........]', 'half in use');
  t.equal(bar(1, 1, 0, 4, 1), '[####++++====....]', 'in use, opening, idle, free');
  t.equal(bar(4, 0, 0, 4), '[################]', 'full');
  t.equal(bar(2, 0, 2, 2), '[########]>>>>>>>>', 'as many waiting as the budget: half and half');
  t.equal(bar(2, 0, 6, 2), '[####]>>>>>>>>>>>>', 'three times the budget waiting');
  t.equal(bar(2, 0, 1000, 2), '[#]>>>>>>>>>>>>>>>', 'far over: the budget keeps one cell');
  t.equal(bar(3, 0, 0, 2), '[################]', 'more held than a lowered budget: full, no free cell');
  t.equal(bar(0, 0, 0, 0), '[................]', 'a budget of 0');
  const shared = (active: number, idle: number, budget: number, ceiling: number) => `[${budgetBar({ active, changing: 0, idle, waiting: 0, budget, ceiling }, 16).inside}]`;
  t.equal(shared(2, 0, 8, 4), '[####....--------]', 'a ceiling of 4 of 8: the rest is other instances\'');
  t.equal(shared(2, 1, 8, 2), '[####==----------]', 'held above the ceiling: no free cell');
  t.equal(shared(2, 0, 8, 8), '[####............]', 'a ceiling at the budget: as without');

  fc.assert(
    fc.property(
      fc.record({
        active: fc.nat(50),
        changing: fc.nat(5),
        idle: fc.nat(50),
        waiting: fc.nat(2000),
        budget: fc.integer({ min: 1, max: 100 }),
        ceiling: fc.option(fc.nat(100)),
      }),
      fc.integer({ min: 2, max: 60 }),
      (n, cells) => {
        const b = budgetBar(n, cells);
        const held = n.active + n.changing + n.idle;
        return (
          // Always the width; a count of 0 never shows; a full budget has no free cell.
          b.inside.length + b.beyond.length === cells &&
          b.inside.length >= 1 &&
          (b.beyond.length > 0) === (n.waiting > 0) &&
          /^#*\+*=*\.*-*$/.test(b.inside) &&
          /^>*$/.test(b.beyond) &&
          (held < Math.min(n.budget, n.ceiling ?? Infinity) || !b.inside.includes('.')) &&
          (n.ceiling === null || n.ceiling < n.budget || !b.inside.includes('-')) &&
          (n.active > 0 || !b.inside.includes('#')) &&
          (n.idle > 0 || !b.inside.includes('='))
        );
      },
    ),
    { numRuns: 3000 },
  );
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 50 }), fc.nat(500), fc.nat(500), (budget, w1, w2) => {
      const inside = (waiting: number) => budgetBar({ active: budget, changing: 0, idle: 0, waiting, budget }, 20).inside.length;
      return w1 <= w2 ? inside(w1) >= inside(w2) : inside(w1) <= inside(w2);
    }),
    { numRuns: 1000 },
  );
});

t.test('apportion: the parts add up, and every count above 0 shows while cells last', async (t) => {
  t.same(apportion([1, 1, 1], 10), [4, 3, 3]);
  t.same(apportion([1000, 1], 5), [4, 1]);
  t.same(apportion([0, 0], 5), [0, 0]);
  fc.assert(
    fc.property(fc.array(fc.nat(1000), { minLength: 1, maxLength: 5 }), fc.nat(80), (counts, cells) => {
      const parts = apportion(counts, cells);
      const nonZero = counts.filter((c) => c > 0).length;
      const sum = parts.reduce((a, b) => a + b, 0);
      return (
        sum === (nonZero === 0 ? 0 : cells) &&
        parts.every((p, i) => p >= 0 && (counts[i] === 0 ? p === 0 : true)) &&
        (cells < nonZero || parts.every((p, i) => counts[i] === 0 || p >= 1))
      );
    }),
    { numRuns: 3000 },
  );
});

t.test('a window shorter than the services says how many are below', async (t) => {
  const many = snapshot(Array.from({ length: 30 }, (_, i) => service(`svc-${String(i).padStart(2, '0')}`, 2, [1, 0])));
  const lines = renderFrame(frame({ status: many }), { ...at80, height: 15 });
  t.equal(lines.length, 15);
  t.equal(lines[12], '... 23 more service(s) below; a taller window shows them');
  t.match(lines[11], /^svc-06 /);
  t.equal(renderFrame(frame({ status: many }), at80).length, 30 + 7, 'no height (--once): every service');
});

t.test('colour wraps the same text', async (t) => {
  const colored = renderFrame(frame(), { ...at80, color: true });
  t.ok(colored.some((l) => l.includes('\x1b[')), 'there is colour');
  t.same(colored.map((l) => l.replace(/\x1b\[[0-9;]*m/g, '')), renderFrame(frame(), at80));
});

t.test('errors are on screen; the last status stays, with its time', async (t) => {
  const first = renderFrame(frame({ status: null, rates: new Map(), error: 'admin API unreachable: http://127.0.0.1:9187/status: ECONNREFUSED' }), at80);
  t.same(first, [
    'pgbudget top  http://127.0.0.1:9187                           12:34:56  every 1s',
    '! admin API unreachable: http://127.0.0.1:9187/status: ECONNREFUSED',
  ]);
  const stale = renderFrame(frame({ statusAt: new Date(2024, 0, 1, 12, 34, 50), error: 'http://127.0.0.1:9187/status: 401 wrong bearer token' }), at80);
  t.equal(stale[0], 'pgbudget top  http://127.0.0.1:9187         (as of 12:34:50)  12:34:56  every 1s');
  t.equal(stale[1], '! http://127.0.0.1:9187/status: 401 wrong bearer token');
  t.match(stale[6], /^storm /);
  const down = snapshot([service('a', 1, [0, 0])], {
    upstream: { host: 'db.internal', port: 5432, maxConnections: 40, serverConnections: 0, lastError: 'connect ECONNREFUSED 10.0.0.1:5432\nagain', connectErrors: {} },
  });
  t.equal(renderFrame(frame({ status: down }), at80)[1], 'upstream  db.internal:5432  server connections 0 / cap 40  DOWN: connect ECONNRE', 'cut at 80, on one line');
  const long = renderFrame(frame({ status: null, error: `http://127.0.0.1:9187/status: 401 a bearer token is required (Authorization: Bearer <token>) (give the token: --token-env NAME or --token-file PATH)` }), at80);
  t.same(long.slice(1), [
    '! http://127.0.0.1:9187/status: 401 a bearer token is required (Authorization:',
    '  Bearer <token>) (give the token: --token-env NAME or --token-file PATH)',
  ], 'a long error wraps, said in full');
  const once = renderFrame(frame({ metricsError: 'http://127.0.0.1:9187/metrics: 401 wrong bearer token' }), { ...at80, refreshSeconds: null });
  t.equal(once[0], 'pgbudget top  http://127.0.0.1:9187                                     12:34:56', 'one frame: no refresh said');
  t.equal(once[3], '! /metrics: http://127.0.0.1:9187/metrics: 401 wrong bearer token');
  t.equal(once[once.length - 1], LEGEND, 'no "q quits"');
});

t.test('numbers in their columns', async (t) => {
  const w = (seconds: number, beyond = false) => fmtWait({ seconds, beyond });
  t.same(
    [w(0), w(0.0004), w(0.001), w(0.4204), w(0.9996), w(1.234), w(12.34), w(60, true), w(123.4), fmtWait(null)],
    ['0ms', '<1ms', '1ms', '420ms', '1.00s', '1.23s', '12.3s', '>60.0s', '123s', '-'],
  );
  t.same([0, 0.04, 0.5, 9.96, 12.4, 999.4, 999.6, 12_345, 123_456, null].map(fmtRate), ['0', '0.0', '0.5', '10', '12', '999', '1.0k', '12.3k', '123k', '-']);
});

t.test('histogramQuantile: as Prometheus estimates it', async (t) => {
  const b = (...pairs: [number, number][]): Bucket[] => pairs.map(([le, count]) => ({ le, count }));
  const h = b([0.1, 0], [0.5, 10], [1, 20], [Infinity, 20]);
  t.same(histogramQuantile(0.5, h), { seconds: 0.5, beyond: false }, 'rank 10 ends the 0.5 bucket');
  t.same(histogramQuantile(0.75, h), { seconds: 0.75, beyond: false }, 'linear within (0.5, 1]');
  t.same(ns(histogramQuantile(0.25, h)), { seconds: 0.3, beyond: false });
  t.same(histogramQuantile(0.5, b([0.001, 4], [Infinity, 4])), { seconds: 0.0005, beyond: false }, 'the first bucket starts at 0');
  t.same(histogramQuantile(0.99, b([1, 1], [60, 1], [Infinity, 10])), { seconds: 60, beyond: true }, 'in +Inf: the highest bound, beyond');
  t.equal(histogramQuantile(0.5, b([1, 0], [Infinity, 0])), null, 'no observations');
  t.equal(histogramQuantile(0.5, b([1, 3])), null, 'no +Inf bucket');
  t.same(histogramQuantile(1, b([0.001, 0], [0.01, 1], [Infinity, 1])), { seconds: 0.01, beyond: false }, 'the top of a bucket is its bound, whatever the rounding');
  fc.assert(
    fc.property(fc.array(fc.nat(100), { minLength: 1, maxLength: 8 }), fc.double({ min: 0, max: 1, noNaN: true }), fc.double({ min: 0, max: 1, noNaN: true }), (counts, q1, q2) => {
      const bounds = [0.001, 0.01, 0.1, 0.5, 1, 5, 10, 60].slice(0, counts.length - 1);
      let sum = 0;
      const buckets = counts.map((c, i) => ({ le: i < bounds.length ? bounds[i] : Infinity, count: (sum += c) }));
      const a = histogramQuantile(Math.min(q1, q2), buckets);
      const z = histogramQuantile(Math.max(q1, q2), buckets);
      if (sum === 0 || bounds.length === 0) return a === null && z === null;
      return a !== null && z !== null && a.seconds <= z.seconds && a.seconds >= 0 && z.seconds <= bounds[bounds.length - 1];
    }),
    { numRuns: 2000 },
  );
});

t.test('bucketIncrease and perSecond: the interval, or the totals when the interval says nothing', async (t) => {
  const b = (...counts: number[]): Bucket[] => counts.map((count, i) => ({ le: [0.1, 1, Infinity][i], count }));
  t.same(bucketIncrease(b(1, 2, 3), b(1, 5, 8)), b(0, 3, 5), 'the increase');
  t.same(bucketIncrease(b(1, 2, 3), b(1, 2, 3)), b(1, 2, 3), 'nothing observed: the totals');
  t.same(bucketIncrease(null, b(1, 2, 3)), b(1, 2, 3), 'first scrape: the totals');
  t.same(bucketIncrease(b(5, 6, 9), b(1, 2, 3)), b(1, 2, 3), 'a restart: the totals');
  t.same(bucketIncrease(b(1, 2), b(1, 2, 3)), b(1, 2, 3), 'other buckets: the totals');
  t.equal(perSecond(10, 40, 2), 15);
  t.equal(perSecond(100, 4, 2), 2, 'a counter that went back counts from 0');
  t.equal(perSecond(null, 4, 2), null);
  t.equal(perSecond(1, null, 2), null);
  t.equal(perSecond(1, 4, 0), null);
});

t.test('serviceRates from two scrapes; metrics that are absent read as null', async (t) => {
  const scrape = (text: string, atMs: number) => ({ samples: new Samples(parseExposition(text).samples), atMs });
  const hist = (service: string, c: [number, number, number]) =>
    [`le="0.1"} ${c[0]}`, `le="1"} ${c[1]}`, `le="+Inf"} ${c[2]}`].map((x) => `pgbudget_queue_wait_seconds_bucket{service="${service}",${x}`).join('\n');
  const before = scrape(
    [
      hist('storm', [0, 10, 10]),
      'pgbudget_rejections_total{service="storm",reason="queue_timeout"} 5',
      'pgbudget_rejections_total{service="storm",reason="queue_full"} 100',
      'pgbudget_client_connection_attempts_total{service="storm"} 40',
      'pgbudget_service_surge{service="storm"} 1',
      hist('calm', [3, 3, 3]),
    ].join('\n'),
    10_000,
  );
  const after = scrape(
    [
      hist('storm', [0, 10, 14]),
      'pgbudget_rejections_total{service="storm",reason="queue_timeout"} 9',
      'pgbudget_rejections_total{service="storm",reason="queue_full"} 200',
      'pgbudget_client_connection_attempts_total{service="storm"} 64',
      'pgbudget_service_surge{service="storm"} 1',
      'pgbudget_service_surge{service="calm"} 0',
      hist('calm', [3, 3, 3]),
    ].join('\n'),
    12_000,
  );
  t.same(nsRates(serviceRates(before, after, 'storm')), {
    p50: { seconds: 1, beyond: true },
    p99: { seconds: 1, beyond: true },
    timeoutsPerSecond: 2,
    connectsPerSecond: 12,
    surge: true,
  }, 'the 4 waits in between were all over 1 s');
  t.same(nsRates(serviceRates(before, after, 'calm')), {
    p50: { seconds: 0.05, beyond: false },
    p99: { seconds: 0.099, beyond: false },
    timeoutsPerSecond: null,
    connectsPerSecond: null,
    surge: false,
  }, 'no wait in between: the totals; no counters: null');
  t.same(nsRates(serviceRates(null, after, 'storm')), {
    p50: { seconds: 0.73, beyond: false },
    p99: { seconds: 1, beyond: true },
    timeoutsPerSecond: null,
    connectsPerSecond: null,
    surge: true,
  }, 'the first scrape: totals, and no rates yet');
});

t.test('arguments', async (t) => {
  const parse = (argv: string[], env = {}) => parseTopArgs(argv, env);
  const d = parse([]);
  if (d === 'help') throw new Error('help');
  t.equal(d.target.base.href, 'http://127.0.0.1:9187/');
  t.equal(d.intervalMs, 1000);
  t.equal(d.once, false);
  t.equal(d.token(), null);
  const o = parse(['--admin', '10.0.0.5:9187/pgbudget', '--interval', '250', '--once', '--token-env', 'TOK'], { TOK: 's3cret' });
  if (o === 'help') throw new Error('help');
  t.equal(o.target.base.href, 'http://10.0.0.5:9187/pgbudget/', 'no scheme: http; a path keeps its place');
  t.equal(o.intervalMs, 250);
  t.equal(o.once, true);
  t.equal(o.token(), 's3cret');
  t.equal(parse(['--help']), 'help');
  t.throws(() => parse(['--interval', '50']), { message: /--interval: .* at least 100/ });
  t.throws(() => parse(['--admin', 'ftp://x']), { message: '--admin: http or https, not ftp:' });
  t.throws(() => parse(['--token-env', 'A', '--token-file', 'B']), { message: '--token-env and --token-file: give one' });
  t.throws(() => parse(['--bogus']), { code: 'ERR_PARSE_ARGS_UNKNOWN_OPTION' });
  const unset = parse(['--token-env', 'NOPE']);
  if (unset === 'help') throw new Error('help');
  t.throws(() => unset.token(), { message: '--token-env: the environment variable NOPE is not set' });
  const missing = parse(['--token-file', '/nonexistent/token']);
  if (missing === 'help') throw new Error('help');
  t.throws(() => missing.token(), { message: '--token-file: cannot read /nonexistent/token: ENOENT' });
});

t.test("a cluster's view (coordination): the instances, the cap's leases, each service across the cluster", async (t) => {
  const coordination: NonNullable<ProxySnapshot['coordination']> = {
    up: true,
    cluster: 'payments-db',
    instance: 'pod-a/1/x',
    onRedisDown: 'static',
    lastError: null,
    downForSeconds: 0,
    cap: { cap: 16, clusterLeases: 12, ceiling: 9 },
    services: [
      { name: 'storm', clusterBudget: 8, clusterLeases: 8, leases: 2, ceiling: 2, peers: [{ instance: 'pod-b/1/y', held: 6, waiting: 40, oldestWaitMs: 1250 }] },
      { name: 'calm', clusterBudget: 4, clusterLeases: 3, leases: 2, ceiling: 3, peers: [{ instance: 'pod-c/1/z', held: 1, waiting: 0, oldestWaitMs: 0 }] },
    ],
    calls: { acquire: 1, release: 0, sync: 3, nudge: 0 },
    counts: { syncs: 3, syncFailures: 0, acquired: 1, refused: 0, lost: 0, shed: 0, downs: 0 },
  };
  const lines = renderFrame(frame({ status: snapshot([service('calm', 4, [1, 1]), service('storm', 2, [2, 0], 10)], { coordination }) }), at80);
  t.equal(lines[3], 'cluster   payments-db  3 instances  leases 12 / cap 16  up');
  t.same(lines.slice(-6, -2), [
    '',
    'CLUSTER',
    'storm        8/8 in the cluster, 2 here (may hold 2), 40 waiting elsewhere (olde',
    'calm         3/4 in the cluster, 2 here (may hold 3)',
  ]);
  // calm: budget 4, one in use and one idle, may hold 3 here: one free, one other instances'.
  t.match(lines.find((l) => l.startsWith('calm ') && l.includes('[')), /\[#+=+\.+-+\]/, "the bar draws the ceiling: the rest of the budget is other instances'");
  t.match(lines.at(-1), LEGEND + LEGEND_CLUSTER, 'and the legend says so');
  const down = renderFrame(frame({ status: snapshot([], { coordination: { ...coordination, up: false, downForSeconds: 4.2, lastError: 'connect ECONNREFUSED' } }) }), at80);
  t.same(down.slice(3, 5), ['cluster   payments-db  3 instances  leases 12 / cap 16  REDIS DOWN 4.2s (static)', '! redis: connect ECONNREFUSED']);
  for (const l of [...lines, ...down]) t.ok(l.length <= 80, l);
});
