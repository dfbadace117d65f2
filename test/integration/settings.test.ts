// Startup parameters applied per checkout: clients whose application_name,
// TimeZone, DateStyle, search_path… differ share one pool, each gets its own
// values on whichever server connection it is handed, and sees exactly the
// ParameterStatus stream a direct connection gives. application_name is the
// client's own in SHOW and pg_stat_activity (or pgbudget:<service> with
// serverApplicationName: service).
import t from 'tap';
import pg from 'pg';
import postgres from 'postgres';
import { ServerConnection } from '../../src/server/connection.js';
import { withCluster } from '../helpers/cluster.js';
import { sendCancel } from '../helpers/load.js';
import { assertNoLeaks, frontend, psql, rawClient, simpleQuery, startProxy, type TestProxy } from '../helpers/proxy.js';

const cluster = await withCluster(t, { maxConnections: 30, users: ['app'] });
await cluster.query('create schema s1; create table s1.marker as select 1 as n');
await cluster.query('create schema "schéma"; create table "schéma".accented as select 2 as n');

const transactionMode = (budget: number, extra: Record<string, unknown> = {}) => ({
  serverApplicationName: 'client',
  services: [{ name: 'app', match: { user: 'app' }, budget, poolMode: 'transaction', queue: { timeoutMs: 20_000 } }],
  ...extra,
});

const stats = (proxy: TestProxy) => proxy.proxy.snapshot().services.find((s) => s.name === 'app')!;

t.test('20 clients, 20 application names, 3 time zones, budget 4: one pool of 4, each client with its own values', async (t) => {
  const proxy = await startProxy(t, cluster, transactionMode(4));
  const zones = ['UTC', 'Europe/Paris', 'America/New_York'];
  const styles = ['ISO, MDY', 'German, DMY', 'SQL, DMY'];
  const clients = Array.from({ length: 20 }, (_, i) =>
    postgres({
      host: '127.0.0.1',
      port: proxy.port,
      user: 'app',
      database: 'postgres',
      max: 1,
      onnotice: () => undefined,
      connection: { application_name: `worker-${i}`, TimeZone: zones[i % 3], DateStyle: styles[i % 3] },
    }),
  );
  t.teardown(() => Promise.all(clients.map((c) => c.end({ timeout: 1 }))));
  const wrong: string[] = [];
  await Promise.all(
    clients.map(async (sql, i) => {
      for (let k = 0; k < 30; k++) {
        const [r] = await sql`select current_setting('TimeZone') as tz, current_setting('DateStyle') as ds, current_setting('application_name') as app,
          (select application_name from pg_stat_activity where pid = pg_backend_pid()) as activity`;
        const want = { tz: zones[i % 3], ds: styles[i % 3], app: `worker-${i}`, activity: `worker-${i}` };
        if (JSON.stringify(r) !== JSON.stringify(want)) wrong.push(`client ${i}: ${JSON.stringify(r)}`);
      }
    }),
  );
  t.same(wrong.slice(0, 5), [], `600 statements, each with its client's own settings (${wrong.length} wrong)`);
  const s = stats(proxy);
  t.equal(s.serversOpened, 4, 'server connections opened: 4, the budget (36 when each combination had its own pool)');
  t.equal(s.serverPids.length, 4, '/status lists the 4 backends');
  await Promise.all(clients.map((c) => c.end()));
  await assertNoLeaks(t, proxy);
});

/** The welcome's ParameterStatus values, and every ParameterStatus after it, of a raw client with these startup parameters. */
function startupPacket(params: Record<string, string>): Buffer {
  const body = Buffer.concat([Buffer.from([0, 3, 0, 0]), ...Object.entries(params).map(([k, v]) => Buffer.from(`${k}\0${v}\0`)), Buffer.from([0])]);
  const len = Buffer.alloc(4);
  len.writeInt32BE(body.length + 4);
  return Buffer.concat([len, body]);
}

async function welcomeOf(port: number, params: Record<string, string>) {
  const c = rawClient(port);
  c.socket.write(startupPacket(params));
  await c.until(() => c.count('Z') >= 1 || c.count('E') >= 1);
  const status = new Map(c.messages.filter((m) => m.type === 'S').map((m) => m.body.toString('utf8').split('\0').slice(0, 2) as [string, string]));
  return { c, status };
}

t.test('the ParameterStatus stream is what a direct connection gives: the welcome, and nothing after it', async (t) => {
  const proxy = await startProxy(t, cluster, transactionMode(1));
  const params = { user: 'app', database: 'postgres', application_name: 'raw', TimeZone: 'europe/paris', DateStyle: 'german', IntervalStyle: 'iso_8601', extra_float_digits: '2' };
  const direct = await welcomeOf(cluster.port, params);
  direct.c.socket.destroy();
  // Another client with other settings goes first, so the one connection has to change for ours.
  const other = await welcomeOf(proxy.port, { user: 'app', database: 'postgres', application_name: 'other', TimeZone: 'UTC' });
  other.c.socket.write(simpleQuery('select 1'));
  await other.c.until(() => other.c.count('Z') === 2);
  const ours = await welcomeOf(proxy.port, params);
  t.same(Object.fromEntries(ours.status), Object.fromEntries(direct.status), "the welcome's values are the server's own for these parameters (canonical spelling too)");
  // Alternate with the other client on the budget of 1: each checkout changes the connection's settings.
  for (let i = 0; i < 5; i++) {
    for (const x of [ours.c, other.c]) {
      const before = x.count('Z');
      x.socket.write(simpleQuery("select current_setting('TimeZone'), current_setting('IntervalStyle'), current_setting('extra_float_digits')"));
      await x.until(() => x.count('Z') === before + 1);
    }
  }
  t.equal(ours.c.count('S'), ours.status.size, 'no ParameterStatus after the welcome');
  const rows = ours.c.messages.filter((m) => m.type === 'D').map((m) => m.body.toString('utf8'));
  t.ok(rows.every((r) => r.includes('Europe/Paris') && r.includes('iso_8601') && r.endsWith('2')), `every row has our values (${rows[0]?.replace(/[^ -~]/g, '.')})`);
  for (const x of [ours.c, other.c]) x.socket.write(frontend('X'));
  await assertNoLeaks(t, proxy);
});

t.test('search_path as a list, an invalid value refused as PostgreSQL refuses it, and RESET by a client harms nobody after it', async (t) => {
  const proxy = await startProxy(t, cluster, transactionMode(1));
  const url = (extra: string) => `postgres://app@127.0.0.1:${proxy.port}/postgres?${extra}`;
  const direct = (extra: string) => `postgres://app@127.0.0.1:${cluster.port}/postgres?${extra}`;
  const withPath = 'options=' + encodeURIComponent('-c search_path=s1,public');
  // libpq sends options; postgres.js sends search_path itself, in the startup packet.
  const sql = postgres({ host: '127.0.0.1', port: proxy.port, user: 'app', database: 'postgres', max: 1, connection: { search_path: '"$user", s1, public' } });
  t.same(await sql`show search_path`, [{ search_path: '"$user", s1, public' }], 'a list, as the server parsed it');
  t.same(await sql`select n from marker`, [{ n: 1 }], 'and in force');
  await sql.end();
  const viaOptions = await psql(url(withPath), 'show search_path');
  t.equal(viaOptions.stdout.trim(), (await psql(direct(withPath), 'show search_path')).stdout.trim(), 'options still work as before (their own pool)');

  const bad = await psql(`postgres://app@127.0.0.1:${proxy.port}/postgres`, 'select 1', { env: { PGTZ: 'Nowhere/Else' } });
  const badDirect = await psql(`postgres://app@127.0.0.1:${cluster.port}/postgres`, 'select 1', { env: { PGTZ: 'Nowhere/Else' } });
  t.not(bad.code, 0);
  t.equal(bad.stderr.replace(/port \d+/g, 'port P'), badDirect.stderr.replace(/port \d+/g, 'port P'), `an invalid TimeZone: the same error (${badDirect.stderr.trim()})`);

  // A client resets its TimeZone (not session state, so not pinned): on a
  // direct connection it would get its startup value back; the next client
  // with the same settings must get its own value, not the connection's.
  const a = postgres({ host: '127.0.0.1', port: proxy.port, user: 'app', database: 'postgres', max: 1, connection: { TimeZone: 'Europe/Paris' } });
  await a`reset timezone`;
  await a.end();
  const b = postgres({ host: '127.0.0.1', port: proxy.port, user: 'app', database: 'postgres', max: 1, connection: { TimeZone: 'Europe/Paris' } });
  t.same(await b`show timezone`, [{ TimeZone: 'Europe/Paris' }], "after another client's RESET, the connection is set again");
  await b.end();
  // The same inside a transaction (the RESET reaches a connection the client already holds).
  const a2 = postgres({ host: '127.0.0.1', port: proxy.port, user: 'app', database: 'postgres', max: 1, connection: { TimeZone: 'Europe/Paris' } });
  await a2.begin(async (tx) => {
    await tx`select 1`;
    await tx`reset timezone`;
  });
  await a2.end();
  const b2 = postgres({ host: '127.0.0.1', port: proxy.port, user: 'app', database: 'postgres', max: 1, connection: { TimeZone: 'Europe/Paris' } });
  t.same(await b2`show timezone`, [{ TimeZone: 'Europe/Paris' }], 'also after a RESET inside a transaction');
  await b2.end();
  await assertNoLeaks(t, proxy);
});

t.test('a client that SETs one of them is pinned, and the next client gets its own values back', async (t) => {
  const proxy = await startProxy(t, cluster, transactionMode(1));
  const a = postgres({ host: '127.0.0.1', port: proxy.port, user: 'app', database: 'postgres', max: 1, connection: { TimeZone: 'UTC' } });
  await a`set timezone = 'Asia/Tokyo'`;
  t.same(await a`show timezone`, [{ TimeZone: 'Asia/Tokyo' }]);
  t.equal(stats(proxy).pins.set, 1, 'pinned');
  await a.end();
  const b = postgres({ host: '127.0.0.1', port: proxy.port, user: 'app', database: 'postgres', max: 1, connection: { TimeZone: 'UTC', application_name: 'b' } });
  t.same(await b`select current_setting('TimeZone') as tz, current_setting('application_name') as app`, [{ tz: 'UTC', app: 'b' }]);
  await b.end();
  await assertNoLeaks(t, proxy);
});

t.test('serverApplicationName: service keeps pgbudget:<service> on the server; session mode applies the settings at login', async (t) => {
  const svc = await startProxy(t, cluster, transactionMode(2, { serverApplicationName: 'service' }));
  const c = new pg.Client({ connectionString: `postgres://app@127.0.0.1:${svc.port}/postgres`, application_name: 'mine' });
  await c.connect();
  t.same((await c.query('show application_name')).rows, [{ application_name: 'pgbudget:app' }], 'the service name, on the server');
  t.equal((c as unknown as { application_name?: string }).application_name ?? 'mine', 'mine');
  await c.end();

  const sess = await startProxy(t, cluster, {
    serverApplicationName: 'client',
    services: [{ name: 'app', match: { user: 'app' }, budget: 1, poolMode: 'session', queue: { timeoutMs: 20_000 } }],
  });
  for (const [tz, app] of [
    ['Europe/Paris', 'first'],
    ['America/New_York', 'second'],
  ]) {
    const sql = postgres({ host: '127.0.0.1', port: sess.port, user: 'app', database: 'postgres', max: 1, connection: { TimeZone: tz, application_name: app } });
    t.same(await sql`select current_setting('TimeZone') as tz, current_setting('application_name') as app`, [{ tz, app }], `session ${app}: its own values`);
    await sql.end();
  }
  t.equal(stats(sess).serversOpened, 1, 'one server connection served both sessions');
  await assertNoLeaks(t, sess);
});

t.test("a cancel that comes while the settings query runs waits for it, and cancels the client's statement", async (t) => {
  const proxy = await startProxy(t, cluster, transactionMode(1));
  const url = `postgres://app@127.0.0.1:${proxy.port}/postgres`;
  const a = new pg.Client({ connectionString: url, application_name: 'a' });
  const b = new pg.Client({ connectionString: url, application_name: 'b' });
  await a.connect();
  await b.connect();
  const outcomes = new Map<string, number>();
  for (let i = 0; i < 40; i++) {
    // a has the one connection last: b's checkout sets its application_name first, in the same write as its statement.
    await a.query('select 1');
    const q = b.query('select pg_sleep(5)').then(
      () => 'ran to the end',
      (e: { code?: string; message: string }) => e.code ?? e.message,
    );
    await sendCancel(proxy.port, b);
    const outcome = await q;
    outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
    if (outcome !== '57014') break;
  }
  t.same([...outcomes], [['57014', 40]], `every statement cancelled, none other ended (${JSON.stringify([...outcomes])})`);
  t.same((await b.query('select current_setting($1) as app', ['application_name'])).rows, [{ app: 'b' }], 'b goes on, with its own settings');
  await a.end();
  await b.end();
  await assertNoLeaks(t, proxy);
});

t.test('a non-ASCII value is applied right after a client that left client_encoding LATIN1 on the connection', async (t) => {
  const proxy = await startProxy(t, cluster, transactionMode(1));
  // A raw client in LATIN1 takes the one connection and leaves it with that encoding.
  const { c } = await welcomeOf(proxy.port, { user: 'app', database: 'postgres', client_encoding: 'LATIN1' });
  c.socket.write(simpleQuery('select 1'));
  await c.until(() => c.count('Z') === 2);
  const sql = postgres({ host: '127.0.0.1', port: proxy.port, user: 'app', database: 'postgres', max: 1, connection: { search_path: '"schéma", public' } });
  t.same(await sql`show search_path`, [{ search_path: '"schéma", public' }], 'the value as the client sent it');
  t.same(await sql`select n from accented`, [{ n: 2 }], 'and the schema found');
  await sql.end();
  c.socket.write(frontend('X'));
  await assertNoLeaks(t, proxy);
});

t.test('a client that leaves while its settings query runs: that connection is closed, never handed to the next', async (t) => {
  // The settings query made slow, so the client is gone before it answers.
  const proto = ServerConnection.prototype as unknown as { applySettings: (sql: string, done: unknown) => void };
  const original = proto.applySettings;
  proto.applySettings = function (this: ServerConnection, sql: string, done: unknown) {
    return original.call(this, `select pg_sleep(0.4); ${sql}`, done);
  };
  t.teardown(() => {
    proto.applySettings = original;
  });
  for (const mode of ['transaction', 'session']) {
    const proxy = await startProxy(t, cluster, {
      serverApplicationName: 'client',
      services: [{ name: 'app', match: { user: 'app' }, budget: 2, poolMode: mode, queue: { timeoutMs: 10_000 } }],
    });
    const leaving = rawClient(proxy.port);
    leaving.socket.write(startupPacket({ user: 'app', database: 'postgres', application_name: 'leaving' }));
    await new Promise((r) => setTimeout(r, 100));
    leaving.socket.destroy();
    await new Promise((r) => setTimeout(r, 50));
    const next = new pg.Client({ connectionString: `postgres://app@127.0.0.1:${proxy.port}/postgres`, application_name: 'next' });
    await next.connect();
    t.same((await next.query('select current_setting($1) as app', ['application_name'])).rows, [{ app: 'next' }], `${mode}: the next client is served, with its own settings`);
    await next.end();
    await assertNoLeaks(t, proxy);
    t.ok(stats(proxy).serversClosed >= 1, `${mode}: the connection the settings query was running on was closed`);
  }
});
