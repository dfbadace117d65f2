// Reloads without surprises: a removed service keeps its clients under its
// last budget until they leave, new clients go elsewhere or are refused,
// and a reload in the middle of a storm keeps every budget and the cap.
import t from 'tap';
import pg from 'pg';
import { validateConfig } from '../../src/config/schema.js';
import { withCluster } from '../helpers/cluster.js';
import { assertNoLeaks, proxyConfig, psql, sleep, startProxy, watchMax, watchProxyBackends } from '../helpers/proxy.js';

const cluster = await withCluster(t, { maxConnections: 30, users: ['app', 'other'] });

const app = { name: 'app', match: { user: 'app' }, budget: 2, poolMode: 'transaction', queue: { timeoutMs: 20_000 } };
const other = { name: 'other', match: { user: 'other' }, budget: 2, poolMode: 'transaction', queue: { timeoutMs: 20_000 } };

for (const withDefault of [false, true]) {
  t.test(`a removed service keeps its clients under its last budget; new ones ${withDefault ? 'go to defaultService' : 'get 28000'}`, async (t) => {
    const proxy = await startProxy(t, cluster, { services: [app, other] });
    const clients = await Promise.all(
      Array.from({ length: 6 }, async () => {
        const c = new pg.Client({ connectionString: proxy.url('app') });
        await c.connect();
        return c;
      }),
    );
    await Promise.all(clients.map((c) => c.query('select 1')));
    const next = { services: [other], ...(withDefault ? { defaultService: 'other' } : {}) };
    proxy.proxy.reload(validateConfig(proxyConfig(cluster, next)));

    const watch = watchProxyBackends(cluster.url(), 'app');
    let done = 0;
    await Promise.all(
      clients.map(async (c, id) => {
        for (let i = 0; i < 30; i++) {
          const r = await c.query({ text: 'select $1::int * 100 + $2::int as n', values: [id, i] });
          if (r.rows[0].n !== id * 100 + i) throw new Error(`client ${id} got ${r.rows[0].n}`);
          done++;
        }
      }),
    );
    t.equal(done, 180, 'every transaction of the removed service ran');
    t.ok((await watch.stop()) <= 2, 'under its last budget of 2');
    const status = proxy.proxy.snapshot().services.find((s) => s.name === 'app');
    t.match(status, { poolMode: 'removed', budget: 2 }, 'shown as removed, with its last budget');

    const fresh = await psql(proxy.url('app'), 'select current_user');
    if (withDefault) {
      t.equal(fresh.code, 0, fresh.stderr);
      const byOther = proxy.proxy.snapshot().services.find((s) => s.name === 'other')!;
      t.ok(byOther.serversOpened >= 1, 'served by the default service');
    } else {
      t.match(fresh.stderr, /FATAL:\s+pgbudget: no service matches user=app database=postgres/);
    }

    await Promise.all(clients.map((c) => c.end()));
    // Once its last client has left, its connections close and it is forgotten.
    const deadline = Date.now() + 3000;
    while (proxy.proxy.snapshot().services.some((s) => s.name === 'app') && Date.now() < deadline) await sleep(20);
    t.notOk(proxy.proxy.snapshot().services.some((s) => s.name === 'app'), 'forgotten once its clients left');
    t.equal(await cluster.countClientBackends({ applicationName: 'pgbudget:app' }), 0, 'its server connections are closed');
    await assertNoLeaks(t, proxy);
  });
}

t.test('a service removed and added back before its clients leave is the same service again', async (t) => {
  const proxy = await startProxy(t, cluster, { services: [app, other] });
  const c = new pg.Client({ connectionString: proxy.url('app') });
  await c.connect();
  proxy.proxy.reload(validateConfig(proxyConfig(cluster, { services: [other] })));
  await sleep(200);
  proxy.proxy.reload(validateConfig(proxyConfig(cluster, { services: [{ ...app, budget: 3 }, other] })));
  await sleep(200);
  t.same((await c.query('select 1 as n')).rows, [{ n: 1 }]);
  const s = proxy.proxy.snapshot().services.find((x) => x.name === 'app');
  t.match(s, { poolMode: 'transaction', budget: 3 });
  await c.end();
  await assertNoLeaks(t, proxy);
});

t.test('reloads during a storm keep every budget and the cap', async (t) => {
  const cap = 5;
  const proxy = await startProxy(t, cluster, { upstream: { maxConnections: cap }, services: [{ ...app, budget: 3 }, { ...other, budget: 3 }] });
  const total = watchMax(cluster.url(), `select count(*)::int as n from pg_stat_activity where application_name like 'pgbudget:%'`);
  const perApp = watchProxyBackends(cluster.url(), 'app');
  const perOther = watchProxyBackends(cluster.url(), 'other');
  let running = true;
  let queries = 0;
  const errors: string[] = [];
  const workers = Array.from({ length: 40 }, async (_, id) => {
    const c = new pg.Client({ connectionString: proxy.url(id % 2 ? 'app' : 'other') });
    await c.connect();
    while (running) {
      try {
        const r = await c.query({ text: 'select $1::int as n, pg_sleep(0.002)', values: [id] });
        if (r.rows[0].n !== id) errors.push(`client ${id} got ${r.rows[0].n}`);
        queries++;
      } catch (err) {
        errors.push((err as Error).message);
      }
    }
    await c.end();
  });
  // Budgets swing between (3, 3), (1, 4) and (4, 1); the cap stays 5.
  const shapes = [
    [1, 4],
    [4, 1],
    [3, 3],
  ];
  for (let i = 0; i < 12; i++) {
    await sleep(150);
    const [a, o] = shapes[i % shapes.length];
    proxy.proxy.reload(
      validateConfig(proxyConfig(cluster, { upstream: { maxConnections: cap }, services: [{ ...app, budget: a }, { ...other, budget: o }] })),
    );
  }
  await sleep(300);
  running = false;
  await Promise.all(workers);
  t.same(errors, [], `no client saw an error across 12 reloads (${queries} queries)`);
  t.ok(queries > 200, `${queries} queries ran`);
  t.ok((await total.stop()) <= cap, 'the cap of 5 held throughout');
  t.ok((await perApp.stop()) <= 4, 'app never held more than its largest budget');
  t.ok((await perOther.stop()) <= 4, 'other never held more than its largest budget');
  const snap = proxy.proxy.snapshot();
  t.same(
    snap.services.map((s) => [s.name, s.budget]),
    [
      ['app', 3],
      ['other', 3],
    ],
    'the last reload is what runs',
  );
  await assertNoLeaks(t, proxy);
});
