// Malformed client input, each a crash of the whole process before: now it
// ends that client with 08P01 naming what was malformed, and nobody else
// notices. Also the bytes around the startup packet: pipelined messages
// behind it, and a Terminate ahead of it.
import net from 'node:net';
import t from 'tap';
import pg from 'pg';
import { withCluster } from '../helpers/cluster.js';
import { assertNoLeaks, errorFields, frontend, rawClient, rawConnect, simpleQuery, sleep, startProxy } from '../helpers/proxy.js';
import { startupPacket } from '../helpers/wire.js';

const cluster = await withCluster(t, { maxConnections: 20, users: ['app', 'sess'] });
const proxy = await startProxy(t, cluster, {
  services: [
    { name: 'app', match: { user: 'app' }, budget: 2, poolMode: 'transaction', queue: { timeoutMs: 5000 } },
    { name: 'sess', match: { user: 'sess' }, budget: 2, poolMode: 'session', queue: { timeoutMs: 5000 } },
  ],
});

/** The messages that each took the process down: a Query without terminator, and empty Bind, Describe, Close. */
const CRASHERS: [string, Buffer, RegExp][] = [
  ['Query "x" without terminator', Buffer.from([0x51, 0, 0, 0, 5, 0x78]), /malformed Query message: query string is not null-terminated/],
  ['empty Bind', frontend('B'), /malformed Bind message: portal name is not null-terminated/],
  ['empty Describe', frontend('D'), /malformed Describe message: no target type/],
  ['empty Close', frontend('C'), /malformed Close message: no target type/],
  ['Bind with a parameter past the end', frontend('B', Buffer.from([0, 0, 0, 0, 0, 1, 0, 0, 0, 9, 1])), /malformed Bind message: parameter 1 \(9 bytes\) past the end/],
  ['Parse with a short type list', frontend('P', Buffer.from('\0select 1\0\0\x05\0\0\0\x17', 'latin1')), /malformed Parse message: 5 parameter types declared, 1 present/],
];

/** Runs a transaction on `c` and checks its answer. */
async function inTransaction(t: { same: (a: unknown, b: unknown) => unknown }, c: pg.Client, n: number): Promise<void> {
  t.same((await c.query(`select ${n} as n`)).rows, [{ n }]);
}

/** One startup packet with extra parameters: a new pool key, so the first login of that key is a pool login. */
function startupWith(user: string, params: Record<string, string>): Buffer {
  return startupPacket({ user, database: 'postgres', ...params });
}

t.test('each message that crashed the process ends only its client, with 08P01 naming it', async (t) => {
  // A bystander inside a transaction the whole time, on the same service.
  const bystander = new pg.Client({ connectionString: proxy.url('app') });
  await bystander.connect();
  await bystander.query('begin');
  for (const [label, bytes, expected] of CRASHERS) {
    const c = rawClient(proxy.port);
    await c.login('app');
    c.socket.write(bytes);
    await c.closed;
    const e = c.messages.find((m) => m.type === 'E');
    const fields = e ? errorFields(frontend('E', e.body)) : null;
    t.equal(fields?.S, 'FATAL', `${label}: FATAL`);
    t.equal(fields?.C, '08P01', `${label}: 08P01`);
    t.match(fields?.M, expected, `${label}: the message names what was malformed`);
    await inTransaction(t, bystander, 7);
  }
  await bystander.query('commit');
  await bystander.end();
  t.same(proxy.proxy.snapshot().services.find((s) => s.name === 'app')!.rejections.protocol_violation, CRASHERS.length);
  await assertNoLeaks(t, proxy);
});

t.test('the same messages pipelined behind the startup packet of a new pool key (the pool login path)', async (t) => {
  let i = 0;
  for (const [label, bytes, expected] of CRASHERS) {
    const { socket, received, closed } = await rawConnect(proxy.port);
    // search_path makes a pool key nobody has used: the client waits for a server login.
    socket.write(Buffer.concat([startupWith('app', { search_path: `public, hostile_${i++}` }), simpleQuery('select 1'), bytes]));
    await closed;
    const fields = errorFields(received());
    t.equal(fields?.C, '08P01', `${label}: 08P01`);
    t.match(fields?.M, expected, label);
  }
  const ok = new pg.Client({ connectionString: proxy.url('app') });
  await ok.connect();
  await inTransaction(t, ok, 3);
  await ok.end();
  await assertNoLeaks(t, proxy);
});

t.test('bytes right behind the startup packet are messages, in every handshake path', async (t) => {
  const SSL = Buffer.from([0, 0, 0, 8, 4, 210, 22, 47]);
  const GSSENC = Buffer.from([0, 0, 0, 8, 4, 210, 22, 48]);
  for (const user of ['app', 'sess']) {
    for (const [path, before] of [['plain', Buffer.alloc(0)], ['after SSLRequest', SSL], ['after GSSENCRequest', GSSENC]] as const) {
      const { socket, received, closed } = await rawConnect(proxy.port);
      socket.write(Buffer.concat([before, startupWith(user, {}), simpleQuery('select 41 + 1 as n')]));
      const deadline = Date.now() + 5000;
      while (!received().includes(Buffer.from('SELECT 1\0', 'latin1')) && Date.now() < deadline) await sleep(5);
      socket.end(frontend('X'));
      await closed;
      const bytes = received();
      t.equal(errorFields(bytes), null, `${user}, ${path}: no error`);
      t.ok(bytes.includes(Buffer.from('\0\0\0\x0242', 'latin1')), `${user}, ${path}: the pipelined query was answered`);
    }
  }
  await assertNoLeaks(t, proxy);
});

t.test('a Terminate where the startup packet was due is a goodbye, as PostgreSQL takes it', async (t) => {
  for (const user of ['app', 'sess']) {
    // node-postgres' order when end() follows connect() at once: Terminate, then the startup packet.
    const { socket, received, closed } = await rawConnect(proxy.port);
    socket.write(Buffer.concat([frontend('X'), startupWith(user, {})]));
    await closed;
    t.equal(received().length, 0, `${user}: closed without a word`);
    // And a Terminate split from its length.
    const split = await rawConnect(proxy.port);
    split.socket.write(Buffer.from('X'));
    await sleep(30);
    split.socket.write(Buffer.from([0, 0, 0, 4]));
    await split.closed;
    t.equal(split.received().length, 0, `${user}: split Terminate, closed without a word`);
  }
  const rejections = proxy.proxy.snapshot().unmatched.rejections;
  t.equal(rejections.protocol_violation, 0, 'not counted as a protocol violation');
});

t.test('node-postgres: end() right after connect() ends as it does against PostgreSQL', async (t) => {
  for (const url of [cluster.url('app'), proxy.url('app'), proxy.url('sess')]) {
    const c = new pg.Client({ connectionString: url });
    const errors: string[] = [];
    c.on('error', (e) => errors.push(e.message));
    c.connect().catch((e: Error) => errors.push(e.message));
    await c.end();
    await sleep(200);
    t.same(errors, [], `${url.includes(String(proxy.port)) ? 'through pgbudget' : 'directly'}: no error`);
  }
  await assertNoLeaks(t, proxy);
});

t.test('a raw socket closed halfway through a message leaks nothing and the proxy serves on', async (t) => {
  for (const user of ['app', 'sess']) {
    const c = rawClient(proxy.port);
    await c.login(user);
    c.socket.write(frontend('Q', Buffer.from('select 1\0')).subarray(0, 7));
    await sleep(20);
    c.socket.destroy();
  }
  const s = net.connect(proxy.port, '127.0.0.1');
  await new Promise((r) => s.on('connect', r));
  s.destroy();
  const ok = new pg.Client({ connectionString: proxy.url('sess') });
  await ok.connect();
  await inTransaction(t, ok, 5);
  await ok.end();
  await assertNoLeaks(t, proxy);
});
