// Budgets, the cap and the wait queue against a real PostgreSQL, observed
// from both sides: pg_stat_activity on the server, errors and metrics on
// the client side.
import t from 'tap';
import pg from 'pg';
import { withCluster } from '../helpers/cluster.js';
import { assertNoLeaks, metric, psql, run, scrape, sleep, startProxy, watchProxyBackends } from '../helpers/proxy.js';

const cluster = await withCluster(t, { maxConnections: 20, users: ['alpha', 'beta', 'gamma'] });

const watchBackends = (service?: string) => watchProxyBackends(cluster.url(), service);

t.test('budgets hold while many clients run, and every client succeeds', async (t) => {
  const proxy = await startProxy(t, cluster, {
    upstream: { maxConnections: 6 },
    services: [
      { name: 'alpha', match: { user: 'alpha' }, budget: 2, poolMode: 'transaction' },
      { name: 'beta', match: { user: 'beta' }, budget: 3, poolMode: 'session' },
    ],
  });
  const watchA = watchBackends('alpha');
  const watchAll = watchBackends();
  const clients = async (user: string, n: number) =>
    Promise.all(
      Array.from({ length: n }, async (_, i) => {
        const c = new pg.Client({ connectionString: proxy.url(user) });
        await c.connect();
        for (let k = 0; k < 3; k++) await c.query('select pg_sleep(0.01), $1::int as i', [i]);
        await c.end();
        return i;
      }),
    );
  const [a, b] = await Promise.all([clients('alpha', 30), clients('beta', 12)]);
  const maxA = await watchA.stop();
  const maxAll = await watchAll.stop();
  t.equal(a.length, 30, 'all 30 alpha clients succeeded with a budget of 2');
  t.equal(b.length, 12, 'all 12 beta clients succeeded with a budget of 3 in session mode');
  t.ok(maxA <= 2 && maxA > 0, `alpha never held more than 2 server connections (max seen ${maxA})`);
  t.ok(maxAll <= 5, `both services together never exceeded 2 + 3 (max seen ${maxAll})`);
  await assertNoLeaks(t, proxy);
});

t.test('queue timeout: the client gets 53300 naming service, budget, use, waiting and wait', async (t) => {
  const proxy = await startProxy(t, cluster, {
    services: [{ name: 'alpha', match: { user: 'alpha' }, budget: 1, poolMode: 'transaction', queue: { timeoutMs: 400 } }],
  });
  const holder = new pg.Client({ connectionString: proxy.url('alpha') });
  await holder.connect();
  await holder.query('begin');
  await holder.query('select 1');
  const started = Date.now();
  const r = await psql(proxy.url('alpha'), 'select 1');
  const elapsed = Date.now() - started;
  t.not(r.code, 0);
  t.match(
    r.stderr,
    /FATAL:\s+pgbudget: service "alpha" waited 4\d\d ms for a server connection \(budget 1, 1 in use, 0 waiting\)/,
    r.stderr.trim(),
  );
  t.ok(elapsed >= 400 && elapsed < 3000, `psql failed after ${elapsed} ms`);
  const c = new pg.Client({ connectionString: proxy.url('alpha') });
  c.on('error', () => {}); // the FATAL also ends the connection
  await c.connect();
  await t.rejects(c.query('select 1'), { code: '53300', severity: 'FATAL' }, 'node-postgres sees SQLSTATE 53300');
  await holder.query('commit');
  t.same((await holder.query('select 7 as n')).rows, [{ n: 7 }], 'the holder is unaffected');
  await holder.end();
  const { body } = await scrape(proxy.adminAddress.port);
  t.equal(metric(body, 'pgbudget_rejections_total{service="alpha",reason="queue_timeout"}'), 2);
  await assertNoLeaks(t, proxy);
});

t.test('queue full: rejected at once with 53300', async (t) => {
  const proxy = await startProxy(t, cluster, {
    services: [{ name: 'alpha', match: { user: 'alpha' }, budget: 1, poolMode: 'transaction', queue: { maxWaiting: 2, timeoutMs: 5000 } }],
  });
  const holder = new pg.Client({ connectionString: proxy.url('alpha') });
  await holder.connect();
  await holder.query('begin');
  const waiters = [1, 2].map(() => new pg.Client({ connectionString: proxy.url('alpha') }));
  for (const w of waiters) await w.connect();
  const pending = waiters.map((w) => w.query('select 1 as n'));
  await sleep(100);
  t.equal(proxy.proxy.snapshot().services[0].clients.waiting, 2);
  const started = Date.now();
  const r = await psql(proxy.url('alpha'), 'select 1');
  t.match(r.stderr, /FATAL:\s+pgbudget: service "alpha" wait queue is full \(maxWaiting 2; budget 1, 1 in use, 2 waiting\)/);
  t.ok(Date.now() - started < 2000, 'rejected without waiting for the timeout');
  await holder.query('commit');
  const results = await Promise.all(pending);
  t.same(results.map((x) => x.rows[0].n), [1, 1], 'the queued clients are served once the holder commits');
  await Promise.all([holder, ...waiters].map((c) => c.end()));
  await assertNoLeaks(t, proxy);
});

t.test('a client that disconnects while waiting leaves the queue at once', async (t) => {
  const proxy = await startProxy(t, cluster, {
    services: [{ name: 'alpha', match: { user: 'alpha' }, budget: 1, poolMode: 'transaction', queue: { timeoutMs: 10_000 } }],
  });
  const holder = new pg.Client({ connectionString: proxy.url('alpha') });
  await holder.connect();
  await holder.query('begin');
  const leaver = new pg.Client({ connectionString: proxy.url('alpha') });
  await leaver.connect();
  leaver.on('error', () => {});
  leaver.query('select 1').catch(() => {});
  const stayer = new pg.Client({ connectionString: proxy.url('alpha') });
  await stayer.connect();
  const stayerResult = stayer.query('select 2 as n');
  await sleep(100);
  t.equal(proxy.proxy.snapshot().services[0].clients.waiting, 2);
  (leaver as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy();
  await sleep(100);
  t.equal(proxy.proxy.snapshot().services[0].clients.waiting, 1, 'the leaver is out of the queue');
  await holder.query('commit');
  t.same((await stayerResult).rows, [{ n: 2 }], 'the next waiter gets the connection, not the departed one');
  await holder.end();
  await stayer.end();
  await assertNoLeaks(t, proxy);
});

t.test('one service waiting never delays another', async (t) => {
  const proxy = await startProxy(t, cluster, {
    services: [
      { name: 'alpha', match: { user: 'alpha' }, budget: 1, poolMode: 'transaction', queue: { timeoutMs: 10_000 } },
      { name: 'beta', match: { user: 'beta' }, budget: 1, poolMode: 'transaction' },
    ],
  });
  const holder = new pg.Client({ connectionString: proxy.url('alpha') });
  await holder.connect();
  await holder.query('begin');
  const blocked = Array.from({ length: 20 }, () => new pg.Client({ connectionString: proxy.url('alpha') }));
  for (const b of blocked) await b.connect();
  const pending = blocked.map((b) => b.query('select 1'));
  const started = Date.now();
  const r = await psql(proxy.url('beta'), 'select 1');
  t.equal(r.code, 0);
  t.ok(Date.now() - started < 2000, `beta served in ${Date.now() - started} ms while alpha has 20 waiting`);
  await holder.query('commit');
  await Promise.all(pending);
  await Promise.all([holder, ...blocked].map((c) => c.end()));
  await assertNoLeaks(t, proxy);
});

t.test('metrics after a known load', async (t) => {
  const proxy = await startProxy(t, cluster, {
    upstream: { maxConnections: 5 },
    services: [
      { name: 'alpha', match: { user: 'alpha' }, budget: 2, poolMode: 'transaction' },
      { name: 'gamma', match: { user: 'gamma' }, budget: 3, poolMode: 'session' },
    ],
  });
  const c = new pg.Client({ connectionString: proxy.url('alpha') });
  await c.connect();
  for (let i = 0; i < 10; i++) await c.query('select 1');
  await c.query('begin');
  await c.query('select 1');
  await c.query('commit');
  const g = new pg.Client({ connectionString: proxy.url('gamma') });
  await g.connect();
  await g.query('select 1');
  // A waiter: hold both alpha slots, then one more client waits.
  const h1 = new pg.Client({ connectionString: proxy.url('alpha') });
  const h2 = new pg.Client({ connectionString: proxy.url('alpha') });
  const w = new pg.Client({ connectionString: proxy.url('alpha') });
  for (const x of [h1, h2, w]) await x.connect();
  await h1.query('begin');
  await h2.query('begin');
  const waiting = w.query('select 1');
  // Long enough that no server login on a loaded machine comes near it: the waiter alone is slower than 0.5 s.
  await sleep(600);
  const { status, body } = await scrape(proxy.adminAddress.port);
  t.equal(status, 200);
  t.equal(metric(body, 'pgbudget_transactions_total{service="alpha"}'), 11, '10 autocommit statements and one transaction');
  t.equal(metric(body, 'pgbudget_server_connections{service="alpha",state="active"}'), 2);
  t.equal(metric(body, 'pgbudget_server_connections{service="gamma",state="active"}'), 1);
  t.equal(metric(body, 'pgbudget_clients_connected{service="alpha"}'), 4);
  t.equal(metric(body, 'pgbudget_clients_waiting{service="alpha"}'), 1);
  t.equal(metric(body, 'pgbudget_service_budget_connections{service="alpha"}'), 2);
  const oldest = metric(body, 'pgbudget_oldest_waiter_seconds{service="alpha"}')!;
  t.ok(oldest >= 0.55 && oldest < 5, `oldest waiter ${oldest} s`);
  t.equal(metric(body, 'pgbudget_upstream_server_connections'), 3);
  t.equal(metric(body, 'pgbudget_upstream_max_connections'), 5);
  t.equal(metric(body, 'pgbudget_upstream_up'), 1);
  t.ok((metric(body, 'pgbudget_queue_wait_seconds_count{service="alpha"}') ?? 0) >= 12, 'every hand-out is observed');
  await h1.query('commit');
  await waiting;
  const after = await scrape(proxy.adminAddress.port);
  const fast = metric(after.body, 'pgbudget_queue_wait_seconds_bucket{le="0.5",service="alpha"}')!;
  const all = metric(after.body, 'pgbudget_queue_wait_seconds_count{service="alpha"}')!;
  t.equal(all - fast, 1, 'exactly one hand-out waited longer than 0.5 s');
  const status2 = JSON.parse((await scrape(proxy.adminAddress.port, '/status')).body);
  t.match(status2.services.find((s: { name: string }) => s.name === 'alpha'), { budget: 2, clients: { connected: 4 } });
  t.equal((await scrape(proxy.adminAddress.port, '/healthz')).status, 200);
  t.equal((await scrape(proxy.adminAddress.port, '/readyz')).status, 200);
  await h2.query('commit');
  await Promise.all([c, g, h1, h2, w].map((x) => x.end()));
  await assertNoLeaks(t, proxy);
});

t.test('pgbench -M simple and -M extended through transaction mode', async (t) => {
  const proxy = await startProxy(t, cluster, {
    services: [{ name: 'bench', budget: 3, poolMode: 'transaction' }],
    defaultService: 'bench',
  });
  const init = await run('pgbench', ['-i', '-s', '1', '-q', '-h', '127.0.0.1', '-p', String(proxy.port), '-U', 'postgres', 'postgres']);
  t.equal(init.code, 0, init.stderr);
  const watch = watchBackends('bench');
  for (const mode of ['simple', 'extended']) {
    const r = await run('pgbench', ['-M', mode, '-c', '12', '-j', '2', '-t', '50', '-h', '127.0.0.1', '-p', String(proxy.port), '-U', 'postgres', 'postgres']);
    t.equal(r.code, 0, `${mode}: ${r.stderr.slice(-500)}`);
    t.match(r.stdout, /number of transactions actually processed: 600\/600/, `${mode}: 600 of 600`);
    t.match(r.stdout, /number of failed transactions: 0 /, `${mode}: none failed`);
  }
  const max = await watch.stop();
  t.ok(max <= 3, `12 pgbench clients never used more than the budget of 3 (max ${max})`);
  await assertNoLeaks(t, proxy);
});

t.test('idle server connections close after serverIdleTimeoutMs', async (t) => {
  const proxy = await startProxy(t, cluster, {
    serverIdleTimeoutMs: 300,
    services: [{ name: 'alpha', match: { user: 'alpha' }, budget: 3, poolMode: 'transaction' }],
  });
  await Promise.all([1, 2, 3].map(() => psql(proxy.url('alpha'), 'select pg_sleep(0.1)')));
  const open = await cluster.countClientBackends({ applicationName: 'pgbudget:alpha' });
  t.ok(open >= 1, `${open} server connections open right after the load`);
  await sleep(800);
  t.equal(await cluster.countClientBackends({ applicationName: 'pgbudget:alpha' }), 0, 'all closed after idling');
  t.equal(proxy.proxy.snapshot().services[0].serverConnections.total, 0);
  t.equal(await psql(proxy.url('alpha'), 'select 1').then((r) => r.stdout.trim()), '1', 'a new client reopens one');
  await assertNoLeaks(t, proxy);
});
