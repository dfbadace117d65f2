// Real clients through pgbudget against a real PostgreSQL: psql, node-postgres,
// postgres.js; session reset; cancel; unmatched service; server-side password
// logins; malformed startup packets.
import t from 'tap';
import pg from 'pg';
import postgres from 'postgres';
import { serialize } from 'pg-protocol/dist/serializer';
import { withCluster } from '../helpers/cluster.js';
import { assertNoLeaks, errorFields, psql, psqlCancelledSleep, rawConnect, sleep, startProxy } from '../helpers/proxy.js';

const cluster = await withCluster(t, {
  maxConnections: 20,
  users: ['app', 'reporting'],
  passwordUsers: [
    { name: 'scram_user', password: 's3cret-scram', method: 'scram-sha-256' },
    { name: 'md5_user', password: 's3cret-md5', method: 'md5' },
    { name: 'plain_user', password: 's3cret-plain', method: 'password' },
  ],
});
process.env.PGBUDGET_TEST_MD5_PASSWORD = 's3cret-md5';

const proxy = await startProxy(t, cluster, {
  services: [
    { name: 'app', match: { user: 'app' }, budget: 3, poolMode: 'transaction' },
    { name: 'sess', match: { user: 'postgres' }, budget: 2, poolMode: 'session' },
    { name: 'reporting', match: { user: 'reporting', applicationName: 'metabase' }, budget: 1 },
    { name: 'scram', match: { user: 'scram_user' }, budget: 1, password: 's3cret-scram' },
    { name: 'md5', match: { user: 'md5_user' }, budget: 1, passwordEnv: 'PGBUDGET_TEST_MD5_PASSWORD' },
    { name: 'plain', match: { user: 'plain_user' }, budget: 1, password: 's3cret-plain', poolMode: 'transaction' },
    { name: 'nopass', match: { user: 'nopass_user' }, budget: 1 },
  ],
});

t.test('psql runs queries in both pool modes', async (t) => {
  const r1 = await psql(proxy.url('app'), 'select 40 + 2');
  t.equal(r1.code, 0, r1.stderr);
  t.equal(r1.stdout.trim(), '42');
  const r2 = await psql(proxy.url('postgres'), "select current_user || ' ' || current_database()");
  t.equal(r2.stdout.trim(), 'postgres postgres');
  const multi = await psql(proxy.url('app'), 'create temp table x(a int); insert into x values (1),(2); select sum(a) from x');
  t.equal(multi.stdout.trim().split('\n').pop(), '3', 'a multi-statement simple query runs on one server connection');
  await assertNoLeaks(t, proxy);
});

t.test('node-postgres: simple and extended protocol, errors, transactions', async (t) => {
  const c = new pg.Client({ connectionString: proxy.url('app') });
  await c.connect();
  t.same((await c.query('select $1::int + 1 as n', [41])).rows, [{ n: 42 }]);
  await t.rejects(c.query('select 1/0'), { code: '22012' }, 'server errors reach the client unchanged');
  t.same((await c.query('select 1 as ok')).rows, [{ ok: 1 }], 'the session goes on after an error');
  await c.query('begin');
  const pid1 = (await c.query('select pg_backend_pid() as p')).rows[0].p;
  await sleep(20);
  const pid2 = (await c.query('select pg_backend_pid() as p')).rows[0].p;
  t.equal(pid1, pid2, 'inside BEGIN the client keeps its server connection');
  await c.query('commit');
  const rows = (await c.query('select generate_series(1, 20000) as i')).rows;
  t.equal(rows.length, 20000, 'a larger result streams through');
  await c.end();
  await assertNoLeaks(t, proxy);
});

t.test('postgres.js with prepared statements off (transaction mode) and on (session mode)', async (t) => {
  const sqlTx = postgres(proxy.url('app'), { prepare: false, max: 4 });
  const results = await Promise.all([1, 2, 3, 4, 5, 6, 7, 8].map((i) => sqlTx`select ${i}::int as i`));
  t.same(results.map((r) => r[0].i), [1, 2, 3, 4, 5, 6, 7, 8]);
  await sqlTx.end();
  const sqlSess = postgres(proxy.url('postgres'), { max: 2 });
  for (let i = 0; i < 5; i++) t.equal((await sqlSess`select ${i}::int + 1 as n`)[0].n, i + 1);
  await sqlSess.end();
  await assertNoLeaks(t, proxy);
});

t.test('transaction mode: an idle client holds no server connection', async (t) => {
  const c = new pg.Client({ connectionString: proxy.url('app') });
  await c.connect();
  await c.query('select 1');
  await sleep(50);
  const snap = proxy.proxy.snapshot().services.find((s) => s.name === 'app')!;
  t.equal(snap.serverConnections.active, 0, 'no server connection is in use by the idle client');
  t.equal(snap.clients.connected, 1);
  await c.query('begin');
  await c.query('select 1');
  const inTx = proxy.proxy.snapshot().services.find((s) => s.name === 'app')!;
  t.equal(inTx.serverConnections.active, 1, 'inside a transaction the server connection stays bound');
  await c.query('rollback');
  await c.end();
  await assertNoLeaks(t, proxy);
});

t.test('session mode: the server connection is reset before the next client', async (t) => {
  const a = new pg.Client({ connectionString: proxy.url('postgres') });
  await a.connect();
  const pid = (await a.query('select pg_backend_pid() as p')).rows[0].p;
  await a.query("set statement_timeout = '12345ms'");
  await a.query('prepare leaked as select 1');
  await a.end();
  await sleep(100);
  // The pool now has idle connections; take both to be sure to get that one.
  const b = new pg.Client({ connectionString: proxy.url('postgres') });
  const c = new pg.Client({ connectionString: proxy.url('postgres') });
  await b.connect();
  await c.connect();
  const seen = [];
  for (const cl of [b, c]) {
    const r = await cl.query("select pg_backend_pid() as p, current_setting('statement_timeout') as st, (select count(*) from pg_prepared_statements)::int as prepared");
    seen.push(r.rows[0]);
  }
  const reused = seen.find((r) => r.p === pid);
  t.ok(reused, 'the server connection was reused');
  t.equal(reused?.st, '0', 'SET was reset');
  t.equal(reused?.prepared, 0, 'prepared statements were discarded');
  await b.end();
  await c.end();
  await assertNoLeaks(t, proxy);
});

t.test('cancel: pg_sleep is cancelled through the proxy', async (t) => {
  for (const user of ['app', 'postgres']) {
    const c = new pg.Client({ connectionString: proxy.url(user) });
    await c.connect();
    const started = Date.now();
    const q = c.query('select pg_sleep(30)');
    await sleep(300);
    // A CancelRequest on a new connection, with the BackendKeyData the proxy gave this client.
    const keys = c as unknown as { processID: number; secretKey: number };
    const canceller = await rawConnect(proxy.port);
    canceller.socket.end(serialize.cancel(keys.processID, keys.secretKey));
    await canceller.closed;
    await t.rejects(q, { code: '57014', message: /canceling statement due to user request/ }, `${user}: cancelled`);
    t.ok(Date.now() - started < 10_000, 'well before the sleep would have ended');
    t.same((await c.query('select 1 as n')).rows, [{ n: 1 }], 'the connection works after the cancel');
    await c.end();
  }
  await assertNoLeaks(t, proxy);
});

t.test('cancel with psql (libpq) on SIGINT', async (t) => {
  const r = await psqlCancelledSleep(proxy.url('app'), 30);
  t.not(r.code, 0);
  t.match(r.stderr, /canceling statement due to user request/);
  t.ok(r.ms < 20_000, `cancelled after ${r.ms} ms`);
  await assertNoLeaks(t, proxy);
});

t.test('an unmatched client gets 28000 naming user, database and application_name', async (t) => {
  const r = await psql(`${proxy.url('reporting')}?application_name=psql`, 'select 1');
  t.not(r.code, 0);
  t.match(r.stderr, /FATAL:\s+pgbudget: no service matches user=reporting database=postgres application_name=psql/);
  const c = new pg.Client({ connectionString: proxy.url('nobody') });
  await t.rejects(c.connect(), { code: '28000' });
  const ok = await psql(`${proxy.url('reporting')}?application_name=metabase`, 'select 1');
  t.equal(ok.code, 0, 'the same user with the matching application_name is served');
  t.equal(proxy.proxy.snapshot().unmatched.rejections.no_service, 2);
  await assertNoLeaks(t, proxy);
});

t.test('server-side scram, md5 and cleartext logins use the service password', async (t) => {
  for (const user of ['scram_user', 'md5_user', 'plain_user']) {
    const r = await psql(proxy.url(user), 'select current_user');
    t.equal(r.code, 0, `${user}: ${r.stderr}`);
    t.equal(r.stdout.trim(), user);
  }
  await assertNoLeaks(t, proxy);
});

t.test('server login errors reach the client unchanged', async (t) => {
  const r = await psql(proxy.url('app', 'no_such_db'), 'select 1');
  t.match(r.stderr, /database "no_such_db" does not exist/);
  const c = new pg.Client({ connectionString: proxy.url('app', 'no_such_db') });
  await t.rejects(c.connect(), { code: '3D000' });
  const ok = await psql(proxy.url('app'), 'select 1');
  t.equal(ok.code, 0, 'other clients of the service are unaffected');
  await assertNoLeaks(t, proxy);
});

t.test('a service without a password gets a clear error when the server asks for one', async (t) => {
  // nopass_user does not exist as a password user; pretend: scram_user via a service without password.
  const noPass = await startProxy(t, cluster, {
    services: [{ name: 'forgot', match: { user: 'scram_user' }, budget: 1 }],
  });
  const r = await psql(noPass.url('scram_user'), 'select 1');
  t.match(r.stderr, /FATAL:\s+pgbudget: server requested SCRAM-SHA-256 authentication but service "forgot" has no password or passwordEnv/);
  const wrong = await startProxy(t, cluster, {
    services: [{ name: 'wrong', match: { user: 'md5_user' }, budget: 1, password: 'nope' }],
  });
  const r2 = await psql(wrong.url('md5_user'), 'select 1');
  t.match(r2.stderr, /password authentication failed for user "md5_user"/);
  await assertNoLeaks(t, noPass);
  await assertNoLeaks(t, wrong);
});

t.test('malformed startup packets get 08P01 and the proxy stays up', async (t) => {
  const cases: [string, Buffer][] = [
    ['length below 8', Buffer.from([0, 0, 0, 4, 0, 3, 0, 0])],
    ['length over the limit', Buffer.from([0, 1, 0, 0, 0, 3, 0, 0])],
    ['protocol 2.0', Buffer.from([0, 0, 0, 8, 0, 2, 0, 0])],
    ['no user', serialize.startup({ database: 'x' })],
    ['garbage', Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n')],
  ];
  for (const [name, bytes] of cases) {
    const c = await rawConnect(proxy.port);
    c.socket.write(bytes);
    await c.closed;
    const f = errorFields(c.received());
    t.equal(f?.C, '08P01', `${name}: SQLSTATE 08P01`);
    t.equal(f?.S, 'FATAL', `${name}: FATAL`);
    t.match(f?.M, /^pgbudget: protocol violation: /, `${name}: ${f?.M}`);
  }
  const ok = await psql(proxy.url('app'), 'select 1');
  t.equal(ok.code, 0, 'the proxy still serves clients');
  await assertNoLeaks(t, proxy);
});

t.test('a client that does not finish startup in time is closed with 08P01', async (t) => {
  const quick = await startProxy(t, cluster, { startupTimeoutMs: 300, services: [{ name: 'app', budget: 1 }] });
  const c = await rawConnect(quick.port);
  const started = Date.now();
  c.socket.write(Buffer.from([0, 0, 0])); // a partial length, then nothing
  await c.closed;
  const waited = Date.now() - started;
  const f = errorFields(c.received());
  t.equal(f?.C, '08P01');
  t.equal(f?.M, 'pgbudget: startup not completed within 300 ms');
  t.ok(waited >= 250 && waited < 3000, `closed after ${waited} ms`);
  t.equal(quick.proxy.snapshot().unmatched.rejections.startup_timeout, 1);
  await assertNoLeaks(t, quick);
});

t.test('SSLRequest is answered N and the client goes on in plain text', async (t) => {
  const r = await psql(`${proxy.url('app')}?sslmode=prefer`, 'select 1');
  t.equal(r.code, 0, r.stderr);
  const req = await psql(`${proxy.url('app')}?sslmode=require`, 'select 1');
  t.match(req.stderr, /server does not support SSL/);
  // GSSENCRequest: answered N the same way, then a normal startup on the same socket.
  const c = await rawConnect(proxy.port);
  const gss = Buffer.alloc(8);
  gss.writeInt32BE(8, 0);
  gss.writeInt32BE(80877104, 4);
  c.socket.write(gss);
  await sleep(100);
  t.equal(c.received().toString('latin1'), 'N');
  c.socket.write(serialize.startup({ user: 'app', database: 'postgres' }));
  await sleep(300);
  t.match(c.received().toString('latin1'), /R\0\0\0\x08\0\0\0\0/, 'AuthenticationOk follows');
  c.socket.end(serialize.end());
  await c.closed;
  await assertNoLeaks(t, proxy);
});

t.test('a malformed message after startup gets 08P01 and other clients do not notice', async (t) => {
  const other = new pg.Client({ connectionString: proxy.url('app') });
  await other.connect();
  const c = await rawConnect(proxy.port);
  c.socket.write(serialize.startup({ user: 'app', database: 'postgres' }));
  await sleep(200);
  const bad = Buffer.from([0x51, 0, 0, 0, 2]); // Query with length 2
  c.socket.write(bad);
  await c.closed;
  const f = errorFields(c.received().subarray(c.received().indexOf(Buffer.from('Z\0\0\0\x05I')) + 6));
  t.equal(f?.C, '08P01');
  t.match(f?.M, /invalid message length 2/);
  t.same((await other.query('select 2 as n')).rows, [{ n: 2 }]);
  await other.end();
  await assertNoLeaks(t, proxy);
});
