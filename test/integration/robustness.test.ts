// Failure paths found in review: clients that vanish mid-reply, servers that
// vanish mid-conversation, protocol errors mid-message, COPY over the
// extended protocol. Each must leave no slot leaked and no other client hurt.
import net from 'node:net';
import t, { type Test } from 'tap';
import pg from 'pg';
import postgres from 'postgres';
import { withCluster } from '../helpers/cluster.js';
import { assertNoLeaks, frontend, rawClient, simpleQuery, sleep, startProxy } from '../helpers/proxy.js';

const cluster = await withCluster(t, { maxConnections: 20, users: ['app', 'sess'] });
const proxy = await startProxy(t, cluster, {
  serverApplicationName: 'client',
  services: [
    { name: 'app', match: { user: 'app' }, budget: 2, poolMode: 'transaction', queue: { timeoutMs: 5000 } },
    { name: 'sess', match: { user: 'sess' }, budget: 2, poolMode: 'session', queue: { timeoutMs: 5000 } },
  ],
});

t.test('clients reset while their reply arrives leak nothing (both modes)', async (t) => {
  for (const user of ['sess', 'app']) {
    await Promise.all(
      Array.from({ length: 40 }, async (_, i) => {
        const c = rawClient(proxy.port);
        await c.login(user);
        c.socket.write(simpleQuery('select pg_sleep(0.05)'));
        await sleep(45 + (i % 10));
        c.socket.resetAndDestroy();
      }),
    );
    await assertNoLeaks(t, proxy, 8000);
    const ok = new pg.Client({ connectionString: proxy.url(user) });
    await ok.connect();
    t.same((await ok.query('select 1 as n')).rows, [{ n: 1 }], `${user}: still served after 40 reset clients`);
    await ok.end();
  }
});

t.test('the server dies and the client keeps sending: the proxy stays up', async (t) => {
  const c = rawClient(proxy.port, true);
  await c.login('sess');
  c.socket.write(simpleQuery('select pg_backend_pid()'));
  await c.until(() => c.count('Z') === 2);
  const row = c.messages.find((m) => m.type === 'D')!;
  const pid = Number(row.body.toString('latin1', 6));
  await cluster.query('select pg_terminate_backend($1)', [pid]);
  await c.until(() => c.count('E') === 1);
  c.socket.write(simpleQuery('select 2')); // still writable: the client half-closed nothing
  await sleep(300);
  const d = new pg.Client({ connectionString: proxy.url('sess') });
  await d.connect();
  t.same((await d.query('select 2 as n')).rows, [{ n: 2 }], 'the proxy is alive and serving');
  await d.end();
  c.socket.destroy();
  await assertNoLeaks(t, proxy);
});

t.test('a protocol error in the middle of a message never leaves a half-sent message for the next client', async (t) => {
  const other = rawClient(proxy.port);
  await other.login('app');
  const bad = rawClient(proxy.port);
  await bad.login('app');
  // CopyData outside COPY is read and ignored by the server, with no reply:
  // send half of one, then the rest plus a nonsense header.
  const copyData = frontend('d', Buffer.alloc(100, 0x41));
  bad.socket.write(copyData.subarray(0, 55));
  await sleep(100);
  bad.socket.write(Buffer.concat([copyData.subarray(55), Buffer.from([0x51, 0, 0, 0, 1])]));
  await bad.closed;
  t.match(bad.messages.at(-1)?.body.toString('latin1'), /protocol violation: invalid message length 1/);
  // Budget 2: whichever server connection the next clients get must answer.
  for (let i = 0; i < 3; i++) {
    other.socket.write(simpleQuery(`select ${40 + i}`));
    await other.until(() => other.count('Z') === 2 + i, 3000);
  }
  t.same(
    other.messages.filter((m) => m.type === 'D').map((m) => m.body.toString('latin1', 6)),
    ['40', '41', '42'],
  );
  other.socket.end(frontend('X'));
  await assertNoLeaks(t, proxy);
});

t.test('an idle server connection that closes is never handed out', async (t) => {
  const c = rawClient(proxy.port);
  await c.login('app');
  c.socket.write(simpleQuery('select 1'));
  await c.until(() => c.count('Z') === 2);
  await sleep(50);
  const conns = (proxy.proxy.pool as unknown as { conns: Map<number, { transport: { socket: import('node:net').Socket } }> }).conns;
  let sent = false;
  for (const conn of conns.values()) {
    // The client's next query arrives in the same turn as the close.
    const socket = conn.transport.socket;
    socket.on('close', () => {
      if (!sent) c.socket.write(simpleQuery('select 2'));
      sent = true;
    });
    socket.destroy();
  }
  await c.until(() => c.count('Z') === 3, 3000);
  t.equal(c.messages.filter((m) => m.type === 'D').at(-1)?.body.toString('latin1', 6), '2', 'answered on a fresh connection');
  c.socket.end(frontend('X'));
  await assertNoLeaks(t, proxy);
});

t.test('COPY FROM STDIN over the extended protocol, Sync before and after: released in transaction mode', async (t) => {
  await cluster.query('create table if not exists copy_ext(a text)');
  const c = rawClient(proxy.port);
  await c.login('app');
  const parse = frontend('P', Buffer.from('\0copy copy_ext from stdin\0\0\0', 'latin1'));
  const bind = frontend('B', Buffer.from('\0\0\0\0\0\0\0\0', 'latin1'));
  const execute = frontend('E', Buffer.from('\0\0\0\0\0', 'latin1'));
  c.socket.write(Buffer.concat([parse, bind, execute, frontend('S')]));
  await c.until(() => c.count('G') === 1);
  // libpq's order: data, CopyDone, then another Sync; the first Sync was ignored during COPY.
  c.socket.write(Buffer.concat([frontend('d', 'one\ntwo\n'), frontend('c'), frontend('S')]));
  await c.until(() => c.count('Z') === 2);
  t.match(c.messages.find((m) => m.type === 'C')?.body.toString('latin1'), /^COPY 2/);
  await sleep(50);
  const app = proxy.proxy.snapshot().services.find((s) => s.name === 'app')!;
  t.equal(app.serverConnections.active, 0, 'the server connection went back to the pool');
  c.socket.end(frontend('X'));
  await assertNoLeaks(t, proxy);
});

t.test('COPY in and out with postgres.js in transaction mode', async (t) => {
  await cluster.query('create table if not exists copy_target(a int, b text)');
  const sql = postgres(proxy.url('app'), { prepare: false, max: 1 });
  const writable = await sql`copy copy_target from stdin`.writable();
  for (let i = 0; i < 1000; i++) writable.write(`${i}\trow ${i}\n`);
  await new Promise<void>((resolve, reject) => {
    writable.on('finish', () => resolve());
    writable.on('error', reject);
    writable.end();
  });
  const [{ n }] = await sql`select count(*)::int as n from copy_target`;
  t.equal(n, 1000);
  await sleep(50);
  const snap = proxy.proxy.snapshot().services.find((s) => s.name === 'app')!;
  t.equal(snap.serverConnections.active, 0, 'the idle client holds no server connection after COPY');
  const readable = await sql`copy (select a from copy_target order by a limit 5) to stdout`.readable();
  let out = '';
  for await (const chunk of readable) out += chunk;
  t.equal(out, '0\n1\n2\n3\n4\n', 'COPY TO STDOUT through the proxy');
  await sql.end();
  await assertNoLeaks(t, proxy);
});

t.test('a client that pipelines megabytes while queued is paused, then served in full and in order (both modes)', async (t) => {
  for (const user of ['app', 'sess']) {
    // Both server connections of the service are held in a transaction.
    const holders = await Promise.all(
      [0, 1].map(async () => {
        const h = new pg.Client({ connectionString: proxy.url(user) });
        await h.connect();
        await h.query('begin');
        return h;
      }),
    );
    const c = rawClient(proxy.port);
    // Transaction mode queues the queries; session mode binds at login, so
    // there the login waits, with the queries pipelined behind it.
    if (user === 'app') await c.login(user);
    else c.startup(user);
    // 200 queries of about 10 kB each: far past the 64 KiB held before the client is paused.
    const n = 200;
    const pad = 'x'.repeat(10_000);
    for (let i = 0; i < n; i++) c.socket.write(simpleQuery(`select ${i} as i, length('${pad}') as l`));
    await sleep(300);
    t.equal(c.count('D'), 0, `${user}: nothing ran while queued`);
    const err = c.messages.find((m) => m.type === 'E');
    t.notOk(err, `${user}: no error ${err?.body.toString('latin1')}`);
    // Session mode holds a connection until the client leaves: the holders commit and leave.
    await Promise.all(holders.map(async (h) => (await h.query('commit'), await h.end())));
    await c.until(() => c.count('Z') === n + 1, 20_000);
    const rows = c.messages.filter((m) => m.type === 'D').map((m) => Number(m.body.toString('latin1', 6, 6 + m.body.readInt32BE(2))));
    t.same(rows, Array.from({ length: n }, (_, i) => i), `${user}: every query answered once, in order`);
    c.socket.destroy();
  }
  await assertNoLeaks(t, proxy);
});

t.test("a cancel that arrives as its statement ends never cancels the next client's statement (transaction mode)", async (t) => {
  // Budget 2, nobody queued: idle connections are reused most recent first,
  // so the canceller's server connection is the bystander's next one.
  const solo = await startProxy(t, cluster, {
  serverApplicationName: 'client',
    services: [{ name: 'app', match: { user: 'app' }, budget: 2, poolMode: 'transaction', queue: { timeoutMs: 10_000 } }],
  });
  const canceller = rawClient(solo.port);
  await canceller.login('app');
  const keys = canceller.messages.find((m) => m.type === 'K')!.body;
  const bystander = new pg.Client({ connectionString: solo.url('app') });
  await bystander.connect();
  let bystanderErrors = 0;
  let stop = false;
  const busy = (async () => {
    while (!stop) {
      try {
        await bystander.query('select pg_sleep(0.002)');
      } catch {
        bystanderErrors++;
      }
    }
  })();
  let cancelled = 0;
  const rounds = 150;
  for (let i = 0; i < rounds; i++) {
    const readyBefore = canceller.count('Z');
    canceller.socket.write(simpleQuery('select pg_sleep(0.002)'));
    // Aim the cancel at the end of the statement, where the race lives.
    await sleep(i % 5);
    void sendCancel(solo.port, keys);
    await canceller.until(() => canceller.count('Z') > readyBefore, 10_000);
    cancelled = canceller.count('E');
  }
  stop = true;
  await busy;
  t.comment(`${cancelled} of ${rounds} statements of the canceller were cancelled`);
  t.equal(bystanderErrors, 0, "the bystander's statements are never cancelled");
  canceller.socket.destroy();
  await bystander.end();
  await assertNoLeaks(t, solo);
});

// ---------------------------------------------------------------------------
// A cancel that comes before its statement has reached the server: PostgreSQL
// ignores a cancel that finds its backend between commands, so the proxy must
// not pass it on then and forget it.

const parseMsg = (name: string, sql: string) => frontend('P', Buffer.from(`${name}\0${sql}\0\0\0`, 'latin1'));
const bindMsg = (statement: string) => frontend('B', Buffer.from(`\0${statement}\0\0\0\0\0\0\0`, 'latin1'));
const executeMsg = frontend('E', Buffer.from('\0\0\0\0\0', 'latin1'));
const syncMsg = frontend('S');
const flushMsg = frontend('H');

/** Sends a CancelRequest with `keys` (BackendKeyData's body); resolves when the proxy closes that connection. */
function sendCancel(port: number, keys: Buffer): Promise<void> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port }, () => {
      const req = Buffer.alloc(16);
      req.writeInt32BE(16, 0);
      req.writeInt32BE(80877102, 4);
      keys.copy(req, 8, 0, 8);
      s.write(req);
    });
    s.on('error', () => {});
    s.on('close', () => resolve());
  });
}

/** Two clients inside transactions: both server connections of a budget of 2 held (given back at teardown at the latest). */
async function holdBoth(t: Test, url: string): Promise<pg.Client[]> {
  const holders = [new pg.Client({ connectionString: url }), new pg.Client({ connectionString: url })];
  t.teardown(() => Promise.all(holders.map((h) => h.end().catch(() => {}))).then(() => {}));
  for (const h of holders) {
    h.on('error', () => {});
    await h.connect();
    await h.query('begin');
    await h.query('select 1');
  }
  return holders;
}

t.test('a cancel while a queued batch is still arriving answers the batch once it is complete; it never runs', async (t) => {
  const holders = await holdBoth(t, proxy.url('app'));
  const c = rawClient(proxy.port);
  await c.login('app');
  const keys = c.messages.find((m) => m.type === 'K')!.body;
  c.socket.write(Buffer.concat([parseMsg('', 'select pg_sleep(10)'), bindMsg(''), executeMsg]));
  await sleep(100); // queued: both slots are held
  const cancelled = sendCancel(proxy.port, keys);
  await sleep(100);
  const started = Date.now();
  c.socket.write(syncMsg);
  await c.until(() => c.count('Z') === 2, 3000);
  const e = c.messages.find((m) => m.type === 'E')!;
  t.match(e.body.toString('latin1'), /C57014\0/, 'answered 57014 while still queued, both slots still held');
  t.ok(Date.now() - started < 3000, 'never ran');
  await cancelled;
  t.pass("the canceller's connection closed once the cancel was answered");
  for (const h of holders) await (await h.query('commit'), h.end());
  c.socket.write(simpleQuery('select 7'));
  await c.until(() => c.count('Z') === 3);
  t.ok(c.messages.some((m) => m.type === 'D' && m.body.toString('latin1').endsWith('7')), 'the client goes on as usual');
  c.socket.destroy();
  await assertNoLeaks(t, proxy);
});

t.test('a cancel while a queued batch waits without its Sync is sent once the statement reaches the server', async (t) => {
  const holders = await holdBoth(t, proxy.url('app'));
  const c = rawClient(proxy.port);
  await c.login('app');
  const keys = c.messages.find((m) => m.type === 'K')!.body;
  c.socket.write(Buffer.concat([parseMsg('', 'select pg_sleep(10)'), bindMsg(''), executeMsg, flushMsg]));
  await sleep(100);
  const cancelled = sendCancel(proxy.port, keys);
  await sleep(100);
  const started = Date.now();
  await (await holders[0].query('commit'), holders[0].end()); // a slot: the batch goes to the server
  await c.until(() => c.count('E') === 1, 5000);
  t.match(c.messages.find((m) => m.type === 'E')!.body.toString('latin1'), /C57014\0/, 'the statement was cancelled on the server');
  t.ok(Date.now() - started < 5000, `cancelled after ${Date.now() - started} ms, not after its 10 s`);
  await cancelled;
  c.socket.write(syncMsg);
  await c.until(() => c.count('Z') === 2);
  await (await holders[1].query('commit'), holders[1].end());
  c.socket.destroy();
  await assertNoLeaks(t, proxy);
});

t.test('a cancel while the statement waits for a shape check blocked on a lock cancels it at once', async (t) => {
  const solo = await startProxy(t, cluster, {
  serverApplicationName: 'client',
    services: [{ name: 'app', match: { user: 'app' }, budget: 2, poolMode: 'transaction', queue: { timeoutMs: 10_000 } }],
  });
  await cluster.query('create table if not exists locked_t (n int)');
  await cluster.query('grant select on locked_t to app');
  const c = rawClient(solo.port);
  await c.login('app');
  const keys = c.messages.find((m) => m.type === 'K')!.body;
  // Prepared and described on one server connection…
  c.socket.write(Buffer.concat([parseMsg('s1', 'select pg_sleep(0) as z, n from locked_t'), bindMsg('s1'), executeMsg, syncMsg]));
  await c.until(() => c.count('Z') === 2);
  // …which a holder then takes (most recent first), so the next Bind prepares it again elsewhere.
  const [holder, other] = await holdBoth(t, solo.url('app'));
  await (await other.query('commit'), other.end());
  const locker = new pg.Client({ connectionString: cluster.url() });
  await locker.connect();
  await locker.query('begin');
  await locker.query('lock table locked_t in access exclusive mode');
  c.socket.write(Buffer.concat([bindMsg('s1'), executeMsg, syncMsg]));
  await sleep(300); // its Parse waits for the lock; the client's Bind waits for it
  const started = Date.now();
  await sendCancel(solo.port, keys);
  await c.until(() => c.count('Z') === 3, 5000);
  const errors = c.messages.filter((m) => m.type === 'E').map((m) => m.body.toString('latin1'));
  t.equal(errors.length, 1, 'one error');
  t.match(errors[0], /C57014\0/, 'cancelled while the lock was still held');
  t.ok(Date.now() - started < 5000, 'at once');
  await locker.query('rollback');
  await locker.end();
  c.socket.write(Buffer.concat([bindMsg('s1'), executeMsg, syncMsg]));
  await c.until(() => c.count('Z') === 4);
  t.equal(c.count('E'), 1, 'the statement runs as usual afterwards');
  await (await holder.query('commit'), holder.end());
  c.socket.destroy();
  await assertNoLeaks(t, solo);
});
