// Saturation, seen while it happens: one service ("storm", budget 2) is
// stormed by 20 clients that hold pg_sleep transactions and reconnect when
// the queue times them out, while another ("calm") works as usual. The
// metrics, /status and the log must name the storming service and only it:
// one surge warning, its gauge 1 (calm's 0), utilization 1, time at budget
// growing, every connection attempt and every 53300 counted; once the storm
// is over, the gauge back to 0 and one end line. Then the rest of the
// counters: errors pgbudget writes into a session (refused SET, statement
// timeout), a login the server refuses (its own error, not counted as
// pgbudget's), and an upstream that is not there (class "network").
import net from 'node:net';
import t from 'tap';
import pg from 'pg';
import { pino } from 'pino';
import { startPgbudget } from '../../src/app.js';
import { validateConfig } from '../../src/config/schema.js';
import { withCluster } from '../helpers/cluster.js';
import { assertNoLeaks, metric, proxyConfig, scrape, sleep, until } from '../helpers/proxy.js';

const cluster = await withCluster(t, { maxConnections: 20, users: ['storm', 'calm', 'strict'] });

type LogLine = { level: number; msg: string; service?: string } & Record<string, unknown>;

/** A pgbudget in this process whose log (info and up) is kept. */
async function start(raw: Record<string, unknown>) {
  const logs: LogLine[] = [];
  const log = pino({ level: 'info' }, { write: (line: string) => void logs.push(JSON.parse(line)) });
  const app = await startPgbudget(validateConfig(proxyConfig(cluster, raw)), log);
  t.teardown(() => app.stop());
  const url = (user: string, database = 'postgres') => `postgres://${user}@127.0.0.1:${app.address.port}/${database}`;
  const metrics = async () => (await scrape(app.adminAddress.port)).body;
  return { app, logs, url, metrics };
}

const STORM_CLIENTS = 20;
const STORM_MS = 4000;

/** Clients that each connect, hold a transaction of pg_sleep(0.4) and leave, over and over until `ms` have passed. */
async function storm(url: string, ms: number) {
  const until = Date.now() + ms;
  let attempts = 0;
  let served = 0;
  const errors = new Map<string, number>();
  await Promise.all(
    Array.from({ length: STORM_CLIENTS }, async () => {
      while (Date.now() < until) {
        const c = new pg.Client({ connectionString: url });
        c.on('error', () => {});
        attempts++;
        try {
          await c.connect();
          await c.query('begin');
          await c.query('select pg_sleep(0.4)');
          await c.query('commit');
          served++;
        } catch (e) {
          const code = (e as { code?: string }).code ?? (e as Error).message;
          errors.set(code, (errors.get(code) ?? 0) + 1);
        } finally {
          await c.end().catch(() => {});
        }
      }
    }),
  );
  return { attempts, served, errors };
}

/** Two connected clients running a short query every 20 ms until stop(). */
async function calmLoad(url: string) {
  const errors: string[] = [];
  let queries = 0;
  const clients = [new pg.Client({ connectionString: url }), new pg.Client({ connectionString: url })];
  for (const c of clients) {
    c.on('error', (e) => errors.push(e.message));
    await c.connect();
  }
  let running = true;
  const loops = clients.map(async (c) => {
    while (running) {
      try {
        await c.query('select 1');
        queries++;
      } catch (e) {
        errors.push((e as Error).message);
      }
      await sleep(20);
    }
  });
  return {
    async stop() {
      running = false;
      await Promise.all(loops);
      await Promise.all(clients.map((c) => c.end()));
      return { errors, queries };
    },
  };
}

const surgeLines = (logs: LogLine[], service: string, kind: 'start' | 'end') =>
  logs.filter((l) => l.service === service && (kind === 'start' ? l.level === 40 && l.msg.startsWith('surge:') : l.msg.startsWith('surge ended')));

t.test('a storm on one service: one surge, named, on its metrics only; then its end', async (t) => {
  const proxy = await start({
    upstream: { maxConnections: 10 },
    surge: { forMs: 500 },
    services: [
      { name: 'storm', match: { user: 'storm' }, budget: 2, poolMode: 'transaction', queue: { timeoutMs: 1000 } },
      { name: 'calm', match: { user: 'calm' }, budget: 2, poolMode: 'transaction' },
    ],
  });
  const calm = await calmLoad(proxy.url('calm'));
  const stormRun = storm(proxy.url('storm'), STORM_MS);

  await until('the surge gauge of storm', async () => metric(await proxy.metrics(), 'pgbudget_service_surge{service="storm"}') === 1, 5000);
  const during = await proxy.metrics();
  t.equal(metric(during, 'pgbudget_service_surge{service="calm"}'), 0, 'calm is not surging');
  t.equal(metric(during, 'pgbudget_service_surges_total{service="storm"}'), 1);
  t.equal(metric(during, 'pgbudget_service_surges_total{service="calm"}'), 0);
  t.equal(metric(during, 'pgbudget_service_utilization_ratio{service="storm"}'), 1, 'storm holds its whole budget');
  const atBudget1 = metric(during, 'pgbudget_service_at_budget_seconds_total{service="storm"}')!;
  t.ok(atBudget1 > 0, `storm has been at its budget for ${atBudget1} s`);
  t.ok(metric(during, 'pgbudget_clients_waiting{service="storm"}')! > 0, 'storm clients wait');
  const status = JSON.parse((await scrape(proxy.app.adminAddress.port, '/status')).body);
  const stormStatus = status.services.find((s: { name: string }) => s.name === 'storm');
  t.match(stormStatus, { utilization: 1, surge: { surging: true, episodes: 1 } }, '/status has the same numbers');
  t.ok(stormStatus.atBudgetSeconds > 0 && stormStatus.connectionAttempts >= STORM_CLIENTS && stormStatus.connectRatePerSecond > 0);
  t.match(status.services.find((s: { name: string }) => s.name === 'calm'), { surge: { surging: false, episodes: 0 } });
  await sleep(1000);
  const atBudget2 = metric(await proxy.metrics(), 'pgbudget_service_at_budget_seconds_total{service="storm"}')!;
  t.ok(atBudget2 >= atBudget1 + 0.9, `time at budget grows with the storm (${atBudget1} s, then ${atBudget2} s)`);

  const stormed = await stormRun;
  t.ok(stormed.served > 0 && (stormed.errors.get('53300') ?? 0) > 0, `storm: ${stormed.served} served, errors ${JSON.stringify([...stormed.errors])}`);
  t.same([...stormed.errors.keys()], ['53300'], 'queue timeouts are the only errors the storm sees');
  await until('the end of the surge', async () => metric(await proxy.metrics(), 'pgbudget_service_surge{service="storm"}') === 0, 5000);
  const after = await proxy.metrics();
  t.equal(metric(after, 'pgbudget_service_surges_total{service="storm"}'), 1, 'one episode');
  t.equal(metric(after, 'pgbudget_client_connection_attempts_total{service="storm"}'), stormed.attempts, 'every storm connection attempt');
  t.equal(metric(after, 'pgbudget_client_connection_attempts_total{service="calm"}'), 2, 'calm connected twice');
  const timeouts = metric(after, 'pgbudget_rejections_total{service="storm",reason="queue_timeout"}');
  t.equal(metric(after, 'pgbudget_client_errors_total{service="storm",sqlstate="53300"}'), stormed.errors.get('53300'), 'every 53300 the clients got');
  t.equal(timeouts, stormed.errors.get('53300'), 'each one a queue timeout');
  t.notOk(/pgbudget_client_errors_total\{service="calm"/.test(after), 'calm got no error from pgbudget');
  t.ok(metric(after, 'pgbudget_queue_wait_seconds_bucket{le="0.001",service="storm"}') !== undefined, 'queue waits from 1 ms…');
  t.ok(metric(after, 'pgbudget_queue_wait_seconds_bucket{le="60",service="storm"}') !== undefined, '…to 60 s');
  t.ok(metric(after, 'pgbudget_upstream_connect_seconds_count')! >= 4, 'every server connection that logged in: 2 per service');
  t.ok(metric(after, 'pgbudget_upstream_connect_seconds_sum')! > 0);

  const starts = surgeLines(proxy.logs, 'storm', 'start');
  t.equal(starts.length, 1, 'one warning');
  t.match(starts[0], { causes: ['demand'], budget: 2, demand: Number, waiting: Number, oldestWaitMs: Number, connectRatePerSecond: Number });
  t.ok((starts[0].demand as number) > 2 && (starts[0].waiting as number) > 0, `demand ${starts[0].demand}, waiting ${starts[0].waiting}`);
  t.match(starts[0].msg, /^surge: service "storm" demand above budget: demand \d+ against budget 2, \d+ waiting \(oldest \d+ ms\), [\d.]+ connects\/s \(no baseline yet\)$/);
  const ends = surgeLines(proxy.logs, 'storm', 'end');
  t.equal(ends.length, 1, 'one end line');
  t.match(ends[0], { durationMs: Number, peakDemand: Number, budget: 2 });
  t.ok((ends[0].peakDemand as number) >= (starts[0].demand as number), 'the peak is at least the demand at the start');
  t.same([...surgeLines(proxy.logs, 'calm', 'start'), ...surgeLines(proxy.logs, 'calm', 'end')], [], 'nothing about calm');

  const calmRun = await calm.stop();
  t.same(calmRun.errors, [], `calm ran ${calmRun.queries} queries without an error`);
  await assertNoLeaks(t, proxy.app);
});

t.test("errors pgbudget puts in a session are counted; the server's own are not, its refusals count by class", async (t) => {
  const proxy = await start({
    services: [
      { name: 'strict', match: { user: 'strict' }, budget: 1, poolMode: 'transaction', onSessionState: 'error', queryTimeoutMs: 200 },
    ],
  });
  const c = new pg.Client({ connectionString: proxy.url('strict') });
  await c.connect();
  await t.rejects(c.query("set work_mem = '8MB'"), { code: '0A000' }, 'session state refused');
  await t.rejects(c.query('select pg_sleep(5)'), { code: '57014', message: 'canceling statement due to statement timeout' });
  t.same((await c.query('select 1 as n')).rows, [{ n: 1 }], 'the session goes on');
  await c.end();
  // The server refuses the login (no such database): its own FATAL reaches the client unchanged.
  const lost = new pg.Client({ connectionString: proxy.url('strict', 'nosuchdb') });
  lost.on('error', () => {});
  await t.rejects(lost.connect(), { code: '3D000' });
  // No service takes this user.
  const stranger = new pg.Client({ connectionString: proxy.url('stranger') });
  stranger.on('error', () => {});
  await t.rejects(stranger.connect(), { code: '28000' });
  const body = await proxy.metrics();
  t.equal(metric(body, 'pgbudget_client_errors_total{service="strict",sqlstate="0A000"}'), 1);
  t.equal(metric(body, 'pgbudget_client_errors_total{service="strict",sqlstate="57014"}'), 1);
  t.equal(metric(body, 'pgbudget_client_errors_total{service="strict",sqlstate="3D000"}'), undefined, "the server's error is not pgbudget's");
  t.equal(metric(body, 'pgbudget_rejections_total{service="strict",reason="server_login"}'), 1, 'but the refusal is counted');
  t.equal(metric(body, 'pgbudget_upstream_connect_errors_total{class="3D"}'), 1, 'a failed login, by its SQLSTATE class');
  t.equal(metric(body, 'pgbudget_client_connection_attempts_total{service="strict"}'), 2);
  t.equal(metric(body, 'pgbudget_client_connection_attempts_total{service="(unmatched)"}'), 1);
  t.equal(metric(body, 'pgbudget_client_errors_total{service="(unmatched)",sqlstate="28000"}'), 1);
  await assertNoLeaks(t, proxy.app);
});

t.test('an upstream that is not there: connect errors of class "network", and the 53300 the waiting client gets', async (t) => {
  const closedPort = await new Promise<number>((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
  const proxy = await start({
    upstream: { port: closedPort },
    services: [{ name: 'strict', match: { user: 'strict' }, budget: 1, poolMode: 'transaction', queue: { timeoutMs: 300 } }],
  });
  const c = new pg.Client({ connectionString: proxy.url('strict') });
  c.on('error', () => {});
  await t.rejects(c.connect(), { code: '53300' });
  const body = await proxy.metrics();
  t.ok(metric(body, 'pgbudget_upstream_connect_errors_total{class="network"}')! >= 1, 'refused connections have no SQLSTATE');
  t.equal(metric(body, 'pgbudget_client_errors_total{service="strict",sqlstate="53300"}'), 1);
  t.equal(metric(body, 'pgbudget_upstream_connect_seconds_count'), 0, 'nothing logged in');
});
