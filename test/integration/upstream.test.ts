// An upstream that goes away: clients wait while the proxy retries with
// backoff, get an error naming the cause if it stays away, and the proxy
// itself never stops.
import t from 'tap';
import pg from 'pg';
import { withCluster } from '../helpers/cluster.js';
import { assertNoLeaks, metric, psql, scrape, sleep, startProxy } from '../helpers/proxy.js';

const cluster = await withCluster(t, { maxConnections: 20, users: ['app'] });

t.test('upstream down and back: a waiting client is served once it returns', async (t) => {
  const proxy = await startProxy(t, cluster, {
    services: [{ name: 'app', match: { user: 'app' }, budget: 2, poolMode: 'transaction', queue: { timeoutMs: 15_000 } }],
  });
  const c = new pg.Client({ connectionString: proxy.url('app') });
  await c.connect();
  t.same((await c.query('select 1 as n')).rows, [{ n: 1 }]);
  await cluster.stop();
  const { body: downMetrics } = await scrape(proxy.adminAddress.port);
  void downMetrics;
  const started = Date.now();
  const pending = c.query('select 2 as n');
  await sleep(1000);
  const ready = await scrape(proxy.adminAddress.port, '/readyz');
  t.equal(ready.status, 503, 'not ready while the upstream is down');
  const { body } = await scrape(proxy.adminAddress.port);
  t.equal(metric(body, 'pgbudget_upstream_up'), 0);
  t.ok((metric(body, 'pgbudget_server_connect_errors_total{service="app"}') ?? 0) >= 1, 'connect errors are counted');
  t.equal(metric(body, 'pgbudget_clients_waiting{service="app"}'), 1, 'the client waits');
  await cluster.start();
  t.same((await pending).rows, [{ n: 2 }], 'the query ran once the database was back');
  t.ok(Date.now() - started >= 1000, 'it waited for the database');
  t.equal((await scrape(proxy.adminAddress.port, '/readyz')).status, 200, 'ready again');
  await c.end();
  await assertNoLeaks(t, proxy);
});

t.test('upstream down longer than the queue timeout: 53300 naming the cause', async (t) => {
  const proxy = await startProxy(t, cluster, {
    services: [{ name: 'app', match: { user: 'app' }, budget: 2, poolMode: 'transaction', queue: { timeoutMs: 700 } }],
  });
  await psql(proxy.url('app'), 'select 1'); // learn the server parameters while it is up
  await cluster.stop();
  const r = await psql(proxy.url('app'), 'select 1');
  t.match(r.stderr, /FATAL:\s+pgbudget: service "app" waited \d+ ms for a server connection \(budget 2, \d in use, 0 waiting\); upstream unavailable: .*(ECONNREFUSED|terminating|shut)/, r.stderr.trim());
  const fresh = await psql(proxy.url('app'), 'select 1');
  t.not(fresh.code, 0, 'still down');
  await cluster.start();
  const ok = await psql(proxy.url('app'), 'select 3');
  t.equal(ok.stdout.trim(), '3', 'served again once the database is back; the proxy never stopped');
  await assertNoLeaks(t, proxy);
});

t.test('a server connection terminated by the database: idle ones are replaced, a linked client is told', async (t) => {
  const proxy = await startProxy(t, cluster, {
    services: [{ name: 'app', match: { user: 'app' }, budget: 2, poolMode: 'session' }],
  });
  const c = new pg.Client({ connectionString: proxy.url('app') });
  // node-postgres emits the server's FATAL, then "Connection terminated unexpectedly".
  const errored = new Promise<Error & { code?: string }>((resolve) => c.on('error', resolve));
  await c.connect();
  const pid = (await c.query('select pg_backend_pid() as p')).rows[0].p;
  await cluster.query('select pg_terminate_backend($1)', [pid]);
  const err = await errored;
  t.equal(err.code, '57P01', 'the server\'s own FATAL reaches the client');
  t.match(err.message, /terminating connection due to administrator command/);
  const d = new pg.Client({ connectionString: proxy.url('app') });
  await d.connect();
  t.same((await d.query('select 1 as n')).rows, [{ n: 1 }], 'a new client gets a fresh server connection');
  // Terminate an idle pooled connection: the next client must not get it.
  const idlePid = (await d.query('select pg_backend_pid() as p')).rows[0].p;
  await d.end();
  await sleep(100);
  await cluster.query('select pg_terminate_backend($1)', [idlePid]);
  await sleep(100);
  const e = new pg.Client({ connectionString: proxy.url('app') });
  await e.connect();
  t.same((await e.query('select 5 as n')).rows, [{ n: 5 }], 'the terminated idle connection was not handed out');
  await e.end();
  await assertNoLeaks(t, proxy);
});

t.test('the database full (too many clients) is retried, not passed on', async (t) => {
  // Fill the cluster directly, leaving nothing for the proxy, then free it.
  const hogs: pg.Client[] = [];
  for (let i = 0; i < 20; i++) {
    const h = new pg.Client({ connectionString: cluster.url() });
    try {
      await h.connect();
      hogs.push(h);
    } catch {
      break;
    }
  }
  const proxy = await startProxy(t, cluster, {
    services: [{ name: 'app', match: { user: 'app' }, budget: 2, poolMode: 'transaction', queue: { timeoutMs: 10_000 } }],
  });
  const pending = psql(proxy.url('app'), 'select 9');
  await sleep(1500);
  const refused = proxy.proxy.snapshot();
  const attempts = refused.services[0].serverConnectErrors;
  // Backoff doubles from 100 ms: about 4 attempts in 1.5 s, not one per sweep (30).
  t.ok(attempts >= 2 && attempts <= 8, `the proxy met "too many clients" and retried with backoff (${attempts} attempts in 1.5 s)`);
  t.match(refused.upstream.lastError, /too many clients|remaining connection slots/, 'the refusal is reported');
  const { body } = await scrape(proxy.adminAddress.port);
  t.equal(metric(body, 'pgbudget_server_connect_errors_total{service="app"}'), attempts, 'and counted in the metrics');
  t.equal(metric(body, 'pgbudget_clients_waiting{service="app"}'), 1, 'the client waits in its queue meanwhile');
  await Promise.all(hogs.splice(0, 3).map((h) => h.end()));
  const r = await pending;
  t.equal(r.stdout.trim(), '9', r.stderr);
  await Promise.all(hogs.map((h) => h.end()));
  await assertNoLeaks(t, proxy);
});
