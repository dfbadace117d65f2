// Dry-run budgets against a real PostgreSQL: a service with `enforce: false`
// goes past its budget (its clients neither wait nor time out for it), while
// the metrics and one warning per episode say what enforcing it would have
// done; the cap still holds, and a service within its budget gets the slots
// the dry run borrowed; a reload to `enforce: true` makes the budget real
// without dropping anyone.
import t, { type Test } from 'tap';
import pg from 'pg';
import { pino } from 'pino';
import { startPgbudget } from '../../src/app.js';
import { validateConfig } from '../../src/config/schema.js';
import { withCluster } from '../helpers/cluster.js';
import { assertNoLeaks, metric, proxyConfig, scrape, until, watchMax, watchProxyBackends } from '../helpers/proxy.js';

const cluster = await withCluster(t, { maxConnections: 30, users: ['rollout', 'web'] });

type LogLine = { level: number; msg: string; service?: string } & Record<string, unknown>;

async function start(t: Test, raw: Record<string, unknown>) {
  const logs: LogLine[] = [];
  const log = pino({ level: 'info' }, { write: (line: string) => void logs.push(JSON.parse(line)) });
  const config = (r: Record<string, unknown>) => validateConfig(proxyConfig(cluster, r));
  const app = await startPgbudget(config(raw), log);
  t.teardown(() => app.stop());
  const url = (user: string) => `postgres://${user}@127.0.0.1:${app.address.port}/postgres`;
  const metrics = async () => (await scrape(app.adminAddress.port)).body;
  return { app, logs, url, metrics, reload: (r: Record<string, unknown>) => app.reload(config(r)) };
}

/** `n` clients, each on its own connection, all running `sql` at once; the error codes they got. */
async function together(url: string, n: number, sql: string): Promise<{ errors: string[]; ms: number }> {
  const clients = Array.from({ length: n }, () => new pg.Client({ connectionString: url }));
  const errors: string[] = [];
  // The first login teaches the welcome; the others then log in without a server connection (nothing counted for them).
  await clients[0].connect();
  await Promise.all(clients.slice(1).map((c) => c.connect()));
  const t0 = Date.now();
  await Promise.all(
    clients.map((c) => c.query(sql).catch((e: { code?: string; message: string }) => void errors.push(e.code ?? e.message))),
  );
  const ms = Date.now() - t0;
  await Promise.all(clients.map((c) => c.end()));
  return { errors, ms };
}

const dryLines = (logs: LogLine[], service: string) => ({
  starts: logs.filter((l) => l.service === service && l.level === 40 && l.msg.startsWith('dry run:')),
  ends: logs.filter((l) => l.service === service && l.level === 30 && l.msg.startsWith('dry run:')),
});

t.test('a dry run goes past its budget and counts what enforcing it would have done', async (t) => {
  const proxy = await start(t, {
    upstream: { maxConnections: 10 },
    services: [
      { name: 'rollout', match: { user: 'rollout' }, budget: 2, enforce: false, poolMode: 'transaction', queue: { maxWaiting: 3, timeoutMs: 600 } },
      { name: 'web', match: { user: 'web' }, budget: 3, poolMode: 'transaction' },
    ],
  });
  const backends = watchProxyBackends(cluster.url(), 'rollout');
  // Six at once on a budget of 2: 2 seats, 3 would have waited (maxWaiting 3), 1 been refused; the 3 would have timed out at 600 ms.
  const run = await together(proxy.url('rollout'), 6, 'select pg_sleep(1.5)');
  const most = await backends.stop();
  t.same(run.errors, [], 'every client of the dry run is served: nobody waits or times out for the budget');
  t.equal(most, 6, 'six server connections at once, past the budget of 2');
  t.ok(run.ms < 3000, `all six ran together (${run.ms} ms for 1.5 s sleeps)`);

  const body = await proxy.metrics();
  t.equal(metric(body, 'pgbudget_service_enforced{service="rollout"}'), 0);
  t.equal(metric(body, 'pgbudget_service_enforced{service="web"}'), 1);
  t.equal(metric(body, 'pgbudget_would_wait_total{service="rollout"}'), 3, 'three would have waited');
  t.equal(metric(body, 'pgbudget_would_reject_total{service="rollout",reason="queue_full"}'), 1, 'one would have found the queue full');
  t.equal(metric(body, 'pgbudget_would_reject_total{service="rollout",reason="queue_timeout"}'), 3, 'the three waiting would have timed out');
  t.equal(metric(body, 'pgbudget_would_wait_total{service="web"}'), 0, 'an enforced service counts nothing here');
  t.equal(metric(body, 'pgbudget_rejections_total{service="rollout",reason="queue_timeout"}'), 0, 'and nobody was really refused');
  t.ok(metric(body, 'pgbudget_service_utilization_ratio{service="rollout"}')! >= 3, 'utilization shows the overrun (6 held / 2)');
  const status = JSON.parse((await scrape(proxy.app.adminAddress.port, '/status')).body);
  t.match(status.services.find((s: { name: string }) => s.name === 'rollout'), {
    enforced: false,
    wouldWait: 3,
    wouldReject: { queue_full: 1, queue_timeout: 3 },
  });

  const { starts } = dryLines(proxy.logs, 'rollout');
  t.equal(starts.length, 1, 'one warning for the episode');
  t.match(starts[0], { budget: 2, inUse: Number, wouldBeWaiting: Number });
  t.match(starts[0].msg, /^dry run: service "rollout" is beyond its budget, which is not enforced \(enforce: false\): \d+ server connections in use against budget 2/);
  await until('the end of the episode', () => dryLines(proxy.logs, 'rollout').ends.length > 0, 10_000);
  const end = dryLines(proxy.logs, 'rollout').ends[0];
  t.match(end, { budget: 2, wouldWait: 3, wouldReject: { queue_full: 1, queue_timeout: 3 }, peakInUse: 6 });
  t.equal(dryLines(proxy.logs, 'rollout').starts.length, 1, 'still one warning');
  t.same(dryLines(proxy.logs, 'web'), { starts: [], ends: [] }, 'nothing about web');
  await assertNoLeaks(t, proxy.app);
});

t.test('the cap still holds, and a service within its budget gets the slots a dry run borrowed', async (t) => {
  const proxy = await start(t, {
    upstream: { maxConnections: 6 },
    services: [
      { name: 'rollout', match: { user: 'rollout' }, budget: 2, enforce: false, poolMode: 'transaction', queue: { timeoutMs: 20_000 } },
      { name: 'web', match: { user: 'web' }, budget: 3, poolMode: 'transaction', queue: { timeoutMs: 20_000 } },
    ],
  });
  const snap = (name: string) => proxy.app.proxy.snapshot().services.find((s) => s.name === name)!;
  const all = watchMax(cluster.url(), "select count(*)::int as n from pg_stat_activity where application_name like 'pgbudget:%'");
  // The dry run alone takes the whole cap: 6 open transactions, 4 of them beyond its budget of 2.
  // The first login teaches the welcome; the others then log in without a server connection (nothing counted for them).
  const first = await connectTo(proxy.url('rollout'));
  const holders = [first, ...(await Promise.all(Array.from({ length: 5 }, () => connectTo(proxy.url('rollout')))))];
  await Promise.all(holders.map((c) => c.query('begin').then(() => c.query('select 1'))));
  // Two more of its clients wait, for the cap (a real wait: the cap is enforced).
  const late = await Promise.all(Array.from({ length: 2 }, () => connectTo(proxy.url('rollout'))));
  const lateRuns = late.map((c) => c.query('select 1 as n'));
  await until('two dry-run clients waiting', () => snap('rollout').clients.waiting === 2, 5000);
  // Then web, within its budget, asks for a slot: at the cap, it waits too.
  const web = connectTo(proxy.url('web'));
  await until('web waiting', () => snap('web').clients.waiting === 1, 5000);
  // One dry-run transaction ends: the slot it borrowed goes to web, not to the dry run's own clients who waited longer.
  await holders[0].query('commit');
  const webClient = await web;
  t.equal(snap('rollout').clients.waiting, 2, "web was served, the dry run's two still wait");
  t.same((await webClient.query('select 2 as n')).rows, [{ n: 2 }]);
  // The rest end: the dry run's waiters are served in turn.
  await Promise.all(holders.slice(1).map((c) => c.query('commit')));
  t.same((await Promise.all(lateRuns)).map((r) => r.rows[0].n), [1, 1], "the dry run's waiters are served in the end");
  const most = await all.stop();
  t.ok(most <= 6, `never past the cap of 6 (${most} at most)`);
  await Promise.all([...holders, ...late, webClient].map((c) => c.end()));
  const body = await proxy.metrics();
  // The 4 holders beyond the budget would have waited; the 2 late ones too, unless a seat had freed when they were served.
  const wouldWait = metric(body, 'pgbudget_would_wait_total{service="rollout"}')!;
  t.ok(wouldWait >= 4 && wouldWait <= 6, `${wouldWait} would have waited`);
  await assertNoLeaks(t, proxy.app);
});

async function connectTo(url: string): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: url });
  c.on('error', () => undefined);
  await c.connect();
  return c;
}

t.test('a reload to enforce: true makes the budget real, dropping nobody', async (t) => {
  const services = (enforce: boolean) => [
    { name: 'rollout', match: { user: 'rollout' }, budget: 2, enforce, poolMode: 'transaction', queue: { timeoutMs: 10_000 } },
  ];
  const proxy = await start(t, { upstream: { maxConnections: 10 }, services: services(false) });
  const clients = Array.from({ length: 5 }, () => new pg.Client({ connectionString: proxy.url('rollout') }));
  await Promise.all(clients.map((c) => c.connect()));
  // Five transactions open at once under the dry run.
  await Promise.all(clients.map((c) => c.query('begin').then(() => c.query('select 1'))));
  t.equal(proxy.app.proxy.snapshot().services[0].serverConnections.active, 5);
  // 3 beyond the budget of 2 at once, and maybe logins that overlapped (each is served by a connection, briefly).
  const counted = metric(await proxy.metrics(), 'pgbudget_would_wait_total{service="rollout"}')!;
  t.ok(counted >= 3, `${counted} would have waited`);
  t.same(proxy.reload({ upstream: { maxConnections: 10 }, services: services(true) }), []);
  const body = await proxy.metrics();
  t.equal(metric(body, 'pgbudget_service_enforced{service="rollout"}'), 1);
  // The open transactions finish on their connections; those over the budget close as they come back.
  await Promise.all(clients.map((c) => c.query('commit')));
  await until('the budget in force', () => proxy.app.proxy.snapshot().services[0].serverConnections.total <= 2, 5000);
  const backends = watchProxyBackends(cluster.url(), 'rollout');
  const run = await Promise.all(clients.map((c) => c.query('select pg_sleep(0.2)').then(() => 'ok', (e: Error) => e.message)));
  t.same(run, ['ok', 'ok', 'ok', 'ok', 'ok'], 'every client goes on, now queued within the budget');
  t.ok((await backends.stop()) <= 2, 'enforced: 2 server connections at most');
  await Promise.all(clients.map((c) => c.end()));
  const after = await proxy.metrics();
  t.equal(metric(after, 'pgbudget_would_wait_total{service="rollout"}'), counted, 'what the dry run counted stays (a counter), and enforced adds nothing');
  t.ok(metric(after, 'pgbudget_server_connections_closed_total{service="rollout"}')! >= 3, 'the 3 over the budget closed');
  await assertNoLeaks(t, proxy.app);
});
