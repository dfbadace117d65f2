// The outage pgbudget exists to prevent, replayed: one service ("segmentation")
// opens 300 concurrent clients against a database with max_connections 20
// while another ("web") runs short queries. Directly, clients fail with
// "too many clients"; through pgbudget, every query succeeds, web does not
// notice, and Postgres never sees more than the cap.
import t from 'tap';
import pg from 'pg';
import { withCluster } from '../helpers/cluster.js';
import { assertNoLeaksHttp, sleep, spawnProxy, watchMax } from '../helpers/proxy.js';

const STORM_CLIENTS = 300;
const WEB_CLIENTS = 10;
const cluster = await withCluster(t, { maxConnections: 20 });
// Ordinary roles, as services have: superusers could use the reserved slots.
await cluster.query('create role segmentation login; create role web login');

interface WebRun {
  latenciesMs: number[];
  errors: string[];
}

/** WEB_CLIENTS connected clients running a short query in a loop until stop(). */
async function webLoad(url: string) {
  const run: WebRun = { latenciesMs: [], errors: [] };
  const clients: pg.Client[] = [];
  for (let i = 0; i < WEB_CLIENTS; i++) {
    const c = new pg.Client({ connectionString: url });
    c.on('error', (e) => run.errors.push(e.message));
    try {
      await c.connect();
      clients.push(c);
    } catch (e) {
      run.errors.push((e as Error).message);
    }
  }
  let running = true;
  const loops = clients.map(async (c) => {
    while (running) {
      const started = process.hrtime.bigint();
      try {
        await c.query("select count(*) from pg_class where relname = 'pg_proc'");
        run.latenciesMs.push(Number(process.hrtime.bigint() - started) / 1e6);
      } catch (e) {
        run.errors.push((e as Error).message);
        if (!running) break;
        await sleep(10);
      }
    }
  });
  return {
    run,
    async stop() {
      running = false;
      await Promise.all(loops);
      await Promise.all(clients.map((c) => c.end().catch(() => {})));
      return run;
    },
  };
}

/** STORM_CLIENTS clients at once, each connecting and running pg_sleep(0.05). */
async function storm(url: string) {
  let ok = 0;
  const errors: string[] = [];
  await Promise.all(
    Array.from({ length: STORM_CLIENTS }, async () => {
      const c = new pg.Client({ connectionString: url });
      c.on('error', () => {});
      try {
        await c.connect();
        await c.query('select pg_sleep(0.05)');
        ok++;
      } catch (e) {
        errors.push((e as Error).message);
      } finally {
        await c.end().catch(() => {});
      }
    }),
  );
  return { ok, errors };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)] : NaN;
}

function p95(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length * 0.95)] : NaN;
}

const watch = (sql: string) => watchMax(cluster.url(), sql);

t.test('directly against Postgres, the storm takes the database down for everyone', async (t) => {
  const monitor = watch(`select count(*)::int as n from pg_stat_activity where backend_type = 'client backend' and usename in ('segmentation','web')`);
  await sleep(50);
  const web = await webLoad(cluster.url('web'));
  const s = await storm(cluster.url('segmentation'));
  const webRun = await web.stop();
  const max = await monitor.stop();
  const tooMany = s.errors.filter((e) => /too many clients|remaining connection slots/.test(e)).length;
  t.ok(tooMany > 0, `segmentation: ${tooMany} of ${STORM_CLIENTS} clients failed with "too many clients"`);
  t.comment(`direct: segmentation ok ${s.ok}, failed ${s.errors.length}; web errors ${webRun.errors.length}; max backends ${max}`);
  // Web's clients were connected before the storm; web clients that
  // (re)connect during it are refused the same way.
  let stormDone = false;
  const stormAgain = storm(cluster.url('segmentation')).finally(() => (stormDone = true));
  let attempts = 0;
  let refused = 0;
  while (!stormDone) {
    const late = new pg.Client({ connectionString: cluster.url('web') });
    late.on('error', () => {});
    attempts++;
    await late.connect().then(
      () => late.query('select 1'),
      (e: Error) => (/too many clients|remaining connection slots/.test(e.message) ? refused++ : undefined),
    );
    await late.end().catch(() => {});
  }
  await stormAgain;
  t.comment(`direct: web connections during a second storm: ${refused} of ${attempts} refused with "too many clients"`);
});

t.test('through pgbudget, segmentation waits in its own queue and web does not notice', async (t) => {
  const p = await spawnProxy(t, cluster, {
    upstream: { maxConnections: 16 },
    services: [
      { name: 'segmentation', match: { user: 'segmentation' }, budget: 8, poolMode: 'transaction', queue: { maxWaiting: 1000, timeoutMs: 30_000 } },
      { name: 'web', match: { user: 'web' }, budget: 8, poolMode: 'transaction' },
    ],
  });
  // Calm: web alone.
  const calm = await webLoad(p.url('web'));
  await sleep(1500);
  const calmRun = await calm.stop();

  const monitor = watch(`select count(*)::int as n from pg_stat_activity where application_name like 'pgbudget:%'`);
  const web = await webLoad(p.url('web'));
  await sleep(200);
  const before = web.run.latenciesMs.length;
  const started = Date.now();
  const s = await storm(p.url('segmentation'));
  const stormMs = Date.now() - started;
  const during = web.run.latenciesMs.slice(before);
  const stormRun = await web.stop();
  const max = await monitor.stop();

  const calmMedian = median(calmRun.latenciesMs);
  const stormMedian = median(during);
  t.comment(
    `pgbudget: storm of ${STORM_CLIENTS} took ${stormMs} ms; segmentation ok ${s.ok}, failed ${s.errors.length}; ` +
      `web calm median ${calmMedian.toFixed(2)} ms (p95 ${p95(calmRun.latenciesMs).toFixed(2)}, n=${calmRun.latenciesMs.length}), ` +
      `storm median ${stormMedian.toFixed(2)} ms (p95 ${p95(during).toFixed(2)}, n=${during.length}), ratio ${(stormMedian / calmMedian).toFixed(2)}; ` +
      `web errors ${stormRun.errors.length}; most server connections seen ${max}`,
  );
  t.equal(s.errors.length, 0, `every segmentation query succeeded (${s.errors.slice(0, 3).join('; ')})`);
  t.equal(s.ok, STORM_CLIENTS);
  t.equal(calmRun.errors.length + stormRun.errors.length, 0, 'web saw no error');
  t.ok(during.length > 50, `web kept running during the storm (${during.length} queries)`);
  t.ok(stormMedian <= 2 * calmMedian, `web median latency ${stormMedian.toFixed(2)} ms within 2x of calm ${calmMedian.toFixed(2)} ms`);
  t.ok(max <= 16, `Postgres never saw more than 16 connections from the proxy (max ${max})`);
  const waitedMax = JSON.parse(
    (await (await fetch(`http://127.0.0.1:${p.adminPort}/metrics`)).text())
      .split('\n')
      .filter((l) => l.startsWith('pgbudget_rejections_total{service="segmentation"'))
      .map((l) => l.split(' ')[1])
      .reduce((a, b) => String(Number(a) + Number(b)), '0'),
  );
  t.equal(waitedMax, 0, 'no segmentation client was rejected');
  await assertNoLeaksHttp(t, p.adminPort);
  p.proc.kill('SIGTERM');
  t.equal(await p.exited, 0);
});
