// The chart's dashboard and alerts, proved against a real Prometheus (the
// Debian package's server) that scrapes a real pgbudget during a storm:
// "segmentation" storms (40 clients connecting and running pg_sleep over and
// over, beyond its budget of 4, with a 250 ms queue timeout so that clients
// time out) while "web" works normally within its budget.
//
// Every dashboard query and every alert expression is run through
// /api/v1/query; every metric they read must be scraped; the surge,
// at-budget and queue-timeout alerts fire for segmentation and never for
// web; the cap alert fires (the cap of 16 is within 10% of max_connections 20
// less 3 reserved); PgbudgetNotScraped fires for a target that is down and
// not for pgbudget; and, once the database is stopped, PgbudgetUpstreamDown.
//
// The `for` durations of the shipped rules (up to 10 minutes) do not fit a
// test, and the shipped file is not changed for one. Prometheus loads it as
// it is, plus a copy with every `for` removed and the label copy="immediate".
// The shipped rules must be pending (or firing, those without `for`) for
// exactly the series for which the immediate copy fires, and every rule of
// both files must evaluate without error. The range windows ([1m], [5m]) are
// the shipped ones: Prometheus starts once the storm is under way, so all it
// has seen is the storm, and the rules read windows with min_over_time,
// max_over_time and increase() > 0, which hold on a window seen in part as
// on a whole one (a rate() > 0.9 would not: over a window seen in part it
// reads low).
import t, { type Test } from 'tap';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { stringify } from 'yaml';
import { withCluster } from '../helpers/cluster.js';
import { alertRules, asPromQL, dashboardQueries, metricNames, readRuleFile, rulesFile, type AlertRule } from '../helpers/monitoring.js';
import { startPrometheus, type ActiveAlert, type RunningPrometheus } from '../helpers/prometheus.js';
import { sleep, startProxy } from '../helpers/proxy.js';

const STORM = 'segmentation';
const CALM = 'web';
const STORM_CLIENTS = 40;
const CALM_CLIENTS = 3;
const JOB = 'pgbudget';
/** A scrape job whose target is down: PgbudgetNotScraped fires for it, and for it only. */
const GONE_JOB = 'pgbudget-gone';
/** Grafana's $__rate_interval, as the dashboard queries are run here. */
const RATE_INTERVAL = '10s';

const cluster = await withCluster(t, { maxConnections: 20 });
// Ordinary roles, as services have: superusers could use the reserved slots.
await cluster.query(`create role ${STORM} login; create role ${CALM} login`);
const proxy = await startProxy(t, cluster, {
  // 16 of the 17 slots the database gives ordinary roles: the cap alert's case.
  upstream: { maxConnections: 16 },
  // The database's limits, read once a second (the database_* metrics).
  headroom: { user: 'postgres', intervalMs: 1000 },
  services: [
    { name: STORM, match: { user: STORM }, budget: 4, poolMode: 'transaction', queue: { maxWaiting: 1000, timeoutMs: 250 } },
    // Its 3 clients can fill its budget of 3 (utilization 1) but never wait.
    { name: CALM, match: { user: CALM }, budget: 3, poolMode: 'transaction', queue: { timeoutMs: 1000 } },
  ],
});

/** `clients` loops of `step` until stop(). */
function load(clients: number, step: () => Promise<void>) {
  let running = true;
  const loops = Array.from({ length: clients }, async () => {
    while (running) await step().catch(() => sleep(10));
  });
  return {
    async stop() {
      running = false;
      await Promise.all(loops);
    },
  };
}

// Connect, sleep 50 ms in a transaction, disconnect: the per-call connection
// of the outage. Most of these wait past 250 ms and get 53300.
const storm = load(STORM_CLIENTS, async () => {
  const c = new pg.Client({ connectionString: proxy.url(STORM) });
  c.on('error', () => {});
  try {
    await c.connect();
    await c.query('select pg_sleep(0.05)');
  } finally {
    await c.end().catch(() => {});
  }
});
const calmClients = await Promise.all(
  Array.from({ length: CALM_CLIENTS }, async () => {
    const c = new pg.Client({ connectionString: proxy.url(CALM) });
    c.on('error', () => {});
    await c.connect();
    return c;
  }),
);
let next = 0;
const calm = load(CALM_CLIENTS, async () => {
  await calmClients[next++ % CALM_CLIENTS].query("select count(*) from pg_class where relname = 'pg_proc'");
  await sleep(20);
});
t.teardown(async () => {
  await Promise.all([storm.stop(), calm.stop()]);
  await Promise.all(calmClients.map((c) => c.end().catch(() => {})));
});

// Prometheus starts once segmentation is over its budget.
for (const deadline = Date.now() + 10_000; Date.now() < deadline; await sleep(20)) {
  if (proxy.proxy.snapshot().services.find((s) => s.name === STORM)!.clients.waiting > 0) break;
}

/** A port nothing listens on. */
async function closedPort(): Promise<number> {
  const server = net.createServer().listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((r) => server.close(r));
  return port;
}

const IMMEDIATE = 'immediate';
const dir = await mkdtemp(path.join(os.tmpdir(), 'pgbudget-rules-'));
t.teardown(() => rm(dir, { recursive: true, force: true }));
const immediateFile = path.join(dir, 'pgbudget-rules-immediate.yaml');
await writeFile(
  immediateFile,
  stringify({
    groups: readRuleFile().groups.map((g) => ({
      name: `${g.name}-${IMMEDIATE}`,
      rules: g.rules.map(({ for: _for, ...rule }) => ({ ...rule, labels: { ...rule.labels, copy: IMMEDIATE } })),
    })),
  }),
);
const prom = await startPrometheus(t, {
  jobs: [
    { name: JOB, targets: [`127.0.0.1:${proxy.adminAddress.port}`] },
    { name: GONE_JOB, targets: [`127.0.0.1:${await closedPort()}`] },
  ],
  ruleFiles: [rulesFile, immediateFile],
});

// Until its first scrapes, absent(up{…}) holds and PgbudgetNotScraped is
// pending (the immediate copy firing) for no job at all: the checks start
// with the first evaluation after both targets were scraped.
let scrapedAt = 0;
for (const deadline = Date.now() + 10_000; Date.now() < deadline; await sleep(100)) {
  const up = await prom.query('up');
  if (scrapedAt === 0 && up.length === 2) scrapedAt = up[0].value[0];
  const groups = await prom.rules();
  if (scrapedAt > 0 && groups.every((g) => Date.parse(g.lastEvaluation) / 1000 > scrapedAt)) break;
}

// ---------------------------------------------------------------------------
// checks, polled until they hold or time runs out

/** undefined when it holds, else why not (yet). */
type Check = () => Promise<string | undefined>;

/** Metrics that the latest poll found scraped, to say why a query is empty. */
const scraped = new Set<string>();
const notScraped = (expr: string) => {
  const missing = metricNames(expr).filter((m) => !scraped.has(m));
  return missing.length ? ` (not scraped: ${missing.join(', ')})` : '';
};

async function pollChecks(t: Test, checks: Map<string, Check>, timeoutMs: number, onRound?: () => Promise<void>): Promise<void> {
  const open = new Map(checks);
  const why = new Map<string, string>();
  for (const deadline = Date.now() + timeoutMs; open.size > 0 && Date.now() < deadline; ) {
    await onRound?.();
    await Promise.all(
      [...open].map(async ([name, check]) => {
        const reason = await check().catch((e: Error) => `error: ${e.message}`);
        if (reason === undefined) open.delete(name);
        else why.set(name, reason);
      }),
    );
    if (open.size > 0) await sleep(500);
  }
  for (const name of checks.keys()) t.ok(!open.has(name), open.has(name) ? `${name}: ${why.get(name)}` : name);
}

const sorted = (xs: Iterable<string>) => [...new Set(xs)].sort();
const same = (a: string[], b: string[]) => JSON.stringify(sorted(a)) === JSON.stringify(sorted(b));

/** What an alert is expected to fire for: the values of one label. */
interface Expected {
  by: 'service' | 'job';
  values: string[];
}

const rules = alertRules();
const ruleByName = new Map(rules.map((r) => [r.alert, r]));

/** The alert's expression, run as it is, returns a series for exactly these. */
function exprCheck(rule: AlertRule, want: Expected): Check {
  return async () => {
    const got = (await prom.query(rule.expr)).map((s) => s.metric[want.by]);
    return same(got, want.values) ? undefined : `expression returns ${want.by} [${sorted(got)}], want [${want.values}]${notScraped(rule.expr)}`;
  };
}

/**
 * The immediate copy fires for exactly these; the shipped rule is pending for
 * them, or firing when it has no `for`.
 */
function alertCheck(rule: AlertRule, want: Expected, alerts: () => ActiveAlert[]): Check {
  return async () => {
    for (const copy of [IMMEDIATE, undefined]) {
      const state = copy || !rule.for ? 'firing' : 'pending';
      const mine = alerts().filter((a) => a.labels.alertname === rule.alert && a.labels.copy === copy);
      const got = mine.filter((a) => a.state === state).map((a) => a.labels[want.by]);
      if (!same(got, want.values) || mine.length !== got.length) {
        const seen = mine.map((a) => `${a.labels[want.by]}:${a.state}`).join(', ');
        return `${copy ?? 'shipped'} rule ${state} for ${want.by} [${sorted(got)}] (all: ${seen || 'none'}), want [${want.values}]${notScraped(rule.expr)}`;
      }
    }
    if (want.by === 'service') {
      const summaries = alerts().filter((a) => a.labels.alertname === rule.alert).map((a) => a.annotations.summary);
      if (!summaries.every((s) => want.values.some((v) => s.includes(v)))) return `summaries do not name the service: ${summaries.join(' | ')}`;
    }
    return undefined;
  };
}

/** Watches every alert seen, pending or firing, of either copy. */
function alertWatch(p: RunningPrometheus) {
  let latest: ActiveAlert[] = [];
  const everSeen = new Map<string, Set<string>>();
  return {
    latest: () => latest,
    async poll() {
      latest = await p.alerts();
      for (const a of latest) {
        const seen = everSeen.get(a.labels.alertname) ?? new Set<string>();
        seen.add(`service=${a.labels.service ?? ''} job=${a.labels.job ?? ''}`);
        everSeen.set(a.labels.alertname, seen);
      }
    },
    /** Every series an alert was ever seen for. */
    seenFor: (alert: string) => sorted(everSeen.get(alert) ?? []),
  };
}

const key = (want: Expected, v: string) => (want.by === 'service' ? `service=${v} job=${JOB}` : `service= job=${v}`);

t.test('during the storm: every query returns data, and the alerts fire for segmentation only', async (t) => {
  const during: Record<string, Expected> = {
    PgbudgetServiceAtBudget: { by: 'service', values: [STORM] },
    PgbudgetQueueTimeoutsRising: { by: 'service', values: [STORM] },
    PgbudgetServiceSurge: { by: 'service', values: [STORM] },
    PgbudgetCapNearDatabaseLimit: { by: 'job', values: [JOB] },
    PgbudgetUpstreamDown: { by: 'job', values: [] },
    PgbudgetNotScraped: { by: 'job', values: [GONE_JOB] },
  };
  t.same(Object.keys(during).sort(), rules.map((r) => r.alert).sort(), 'every alert of the rules file is checked here');

  const queries = dashboardQueries();
  const metrics = sorted([...queries.map((q) => q.expr), ...rules.map((r) => r.expr)].flatMap(metricNames));
  const watch = alertWatch(prom);
  const checks = new Map<string, Check>();

  for (const m of metrics) {
    checks.set(`${m} is scraped`, async () => ((await prom.query(`count(${m})`)).length > 0 ? undefined : 'no series'));
  }
  checks.set("the service variable lists both services, and pgbudget's own reading of the headroom", async () => {
    const got = await prom.labelValues('service', 'pgbudget_service_budget_connections');
    return same(got, [STORM, CALM, 'pgbudget:headroom']) ? undefined : `got [${got}]`;
  });
  for (const q of queries) {
    const expr = asPromQL(q.expr, RATE_INTERVAL);
    checks.set(`dashboard ${q.where} returns data`, async () => {
      const result = await prom.query(expr);
      return result.some((s) => Number.isFinite(Number(s.value[1])))
        ? undefined
        : `${result.length ? 'no finite value' : 'no data'}${notScraped(expr)}: ${expr}`;
    });
  }
  const surges = queries.find((q) => q.where === 'annotation Surges')!;
  checks.set('the surge annotations mark segmentation only', async () => {
    const got = (await prom.query(asPromQL(surges.expr, RATE_INTERVAL))).map((s) => s.metric.service);
    return same(got, [STORM]) ? undefined : `got [${got}]${notScraped(surges.expr)}`;
  });
  for (const [alert, want] of Object.entries(during)) {
    const rule = ruleByName.get(alert)!;
    checks.set(`${alert}: expression`, exprCheck(rule, want));
    checks.set(`${alert}: alert state`, alertCheck(rule, want, watch.latest));
  }
  checks.set('every rule of both files evaluates without error', async () => {
    const all = (await prom.rules()).flatMap((g) => g.rules.map((r) => ({ ...r, file: path.basename(g.file) })));
    const bad = all.filter((r) => r.health !== 'ok').map((r) => `${r.file} ${r.name}: ${r.health} ${r.lastError ?? ''}`);
    return all.length === 2 * rules.length && bad.length === 0 ? undefined : `${all.length} rules; ${bad.join('; ')}`;
  });

  // Surge detection wants segmentation over its budget for surge.forMs (10 s by default).
  await pollChecks(t, checks, 25_000, async () => {
    await watch.poll();
    scraped.clear();
    const names = await prom.query('count by (__name__) ({__name__=~"pgbudget_.+"})');
    for (const s of names) scraped.add(s.metric.__name__);
  });

  for (const [alert, want] of Object.entries(during)) {
    const allowed = want.values.map((v) => key(want, v));
    t.same(watch.seenFor(alert).filter((k) => !allowed.includes(k)), [], `${alert} was never pending or firing for anything else`);
  }
  for (const a of watch.latest().filter((a) => a.labels.copy === IMMEDIATE)) {
    t.comment(`firing: ${a.labels.alertname}{${a.labels.service ? `service="${a.labels.service}"` : `job="${a.labels.job}"`}}: ${a.annotations.summary}`);
  }
});

t.test('the database stopped: PgbudgetUpstreamDown fires', async (t) => {
  await Promise.all([storm.stop(), calm.stop()]);
  await cluster.stop();
  const rule = ruleByName.get('PgbudgetUpstreamDown')!;
  const want: Expected = { by: 'job', values: [JOB] };
  const watch = alertWatch(prom);
  const checks = new Map<string, Check>([
    ['PgbudgetUpstreamDown: expression', exprCheck(rule, want)],
    ['PgbudgetUpstreamDown: alert state', alertCheck(rule, want, watch.latest)],
  ]);
  // A client that needs a server connection makes pgbudget try the database.
  await pollChecks(t, checks, 10_000, async () => {
    await watch.poll();
    const c = new pg.Client({ connectionString: proxy.url(CALM) });
    c.on('error', () => {});
    void c
      .connect()
      .then(() => c.query('select 1'))
      .catch(() => {})
      .finally(() => c.end().catch(() => {}));
  });
});
