// Replication connections through pgbudget: a startup with `replication`
// (true or database) gets a server connection of its own, logged in with the
// same parameter, held from login to disconnect, passed through both ways
// (the replication stream is COPY both), never reset or reused, counted
// against its service's budget and the cap, and shown in its own state. A
// logical replication round trip with postgres.js' subscribe, and psql's
// replication commands, whatever the service's pool mode.
import t from 'tap';
import pg from 'pg';
import postgres from 'postgres';
import { withCluster } from '../helpers/cluster.js';
import { assertNoLeaks, metric, psql, scrape, sleep, startProxy, until } from '../helpers/proxy.js';

const cluster = await withCluster(t, {
  maxConnections: 20,
  users: ['cdc_u'],
  extraConf: { wal_level: 'logical', max_wal_senders: 5, max_replication_slots: 5 },
});
await cluster.query('create table events (id serial primary key, v text not null)');
await cluster.query('create publication alltables for all tables');

const config = {
  upstream: { maxConnections: 6 },
  services: [{ name: 'cdc', match: { user: 'cdc_u' }, budget: 2, poolMode: 'transaction', queue: { timeoutMs: 2000 } }],
};

t.test('postgres.js subscribe: an insert made through pgbudget arrives on a replication stream through pgbudget', async (t) => {
  const proxy = await startProxy(t, cluster, config);
  const sql = postgres({ host: '127.0.0.1', port: proxy.port, user: 'cdc_u', database: 'postgres', publications: 'alltables', onnotice: () => undefined });
  t.teardown(() => sql.end({ timeout: 1 }));
  const rows: { id: number; v: string }[] = [];
  const { unsubscribe } = await sql.subscribe('insert:events', (row) => void rows.push(row as { id: number; v: string }));
  const snap = () => proxy.proxy.snapshot().services.find((s) => s.name === 'cdc')!;
  t.equal(snap().serverConnections.replication, 1, 'the stream holds one replication connection');
  const walsenders = await cluster.query<{ n: number }>(
    "select count(*)::int as n from pg_stat_activity where backend_type = 'walsender' and application_name = 'pgbudget:cdc'",
  );
  t.same(walsenders, [{ n: 1 }], 'the server sees a walsender of the service');
  const body = await scrape(proxy.adminAddress.port);
  t.equal(metric(body.body, 'pgbudget_server_connections{service="cdc",state="replication"}'), 1, 'its own state in the metrics');

  await sql`insert into events (v) values ('first'), ('second')`;
  await until('both rows on the stream', () => rows.length === 2, 10_000);
  t.same(
    rows.map((r) => r.v),
    ['first', 'second'],
    'the inserts, in order',
  );
  // The stream goes on while the service's other clients work (budget 2: the stream holds one, they share the other).
  const other = new pg.Client({ connectionString: proxy.url('cdc_u') });
  await other.connect();
  for (let i = 0; i < 5; i++) await other.query('insert into events (v) values ($1)', [`more ${i}`]);
  await other.end();
  await until('seven rows', () => rows.length === 7, 10_000);
  t.equal(rows[6].v, 'more 4');

  const opened = snap().serversOpened;
  await unsubscribe();
  await sql.end({ timeout: 1 });
  await until('the replication connection closed', () => snap().serverConnections.replication === 0 && snap().serversClosed >= 1, 5000);
  t.equal(snap().serversOpened, opened, 'nothing opened to replace it');
  t.same(
    await cluster.query("select count(*)::int as n from pg_stat_activity where backend_type = 'walsender'"),
    [{ n: 0 }],
    'closed with its client, never kept for reuse',
  );
  await assertNoLeaks(t, proxy);
});

t.test('replication connections count against the budget, and are never handed to an ordinary client', async (t) => {
  const proxy = await startProxy(t, cluster, config);
  const url = `postgres://cdc_u@127.0.0.1:${proxy.port}/postgres?replication=database`;
  const direct = await psql(`${cluster.url('cdc_u')}?replication=database`, 'IDENTIFY_SYSTEM');
  const through = await psql(url, 'IDENTIFY_SYSTEM');
  t.equal(through.code, 0, through.stderr);
  t.equal(through.stdout.split('|')[0], direct.stdout.split('|')[0], 'IDENTIFY_SYSTEM: the same system id as directly');
  // Two replication clients hold the whole budget of 2; a third waits at login and times out with the queue error.
  const holders = [postgresReplication(proxy.port), postgresReplication(proxy.port)];
  await Promise.all(holders.map((h) => h.ready));
  const third = await psql(url, 'IDENTIFY_SYSTEM');
  t.not(third.code, 0);
  t.match(third.stderr, /pgbudget: service "cdc" waited \d+ ms for a server connection \(budget 2, 2 in use, \d+ waiting\)/);
  for (const h of holders) await h.end();
  // An ordinary client afterwards gets a fresh connection, never one that was a replication one.
  await until('replication connections gone', () => proxy.proxy.snapshot().services[0].serverConnections.total === 0, 5000);
  const c = new pg.Client({ connectionString: proxy.url('cdc_u') });
  await c.connect();
  t.same((await c.query("select backend_type from pg_stat_activity where pid = pg_backend_pid()")).rows, [{ backend_type: 'client backend' }]);
  await c.end();
  await assertNoLeaks(t, proxy);
});

/** A replication connection held open (psql would log in and leave): node-postgres with replication=database. */
function postgresReplication(port: number) {
  const c = new pg.Client({ host: '127.0.0.1', port, user: 'cdc_u', database: 'postgres', replication: 'database' } as pg.ClientConfig);
  c.on('error', () => undefined);
  const ready = c.connect().then(() => sleep(10));
  return { ready, end: () => c.end() };
}
