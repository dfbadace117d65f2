// Clients that vanish: in the middle of a transaction, of a COPY FROM
// STDIN, of a large result, and without a FIN (a host cut off the network).
// In every case the server connection is closed, never handed to another
// client in an unknown state, and the budget slot is back within a bound.
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import pg from 'pg';
import { withCluster } from '../helpers/cluster.js';
import { assertNoLeaks, frontend, rawClient, run, simpleQuery, sleep, startProxy, type TestProxy } from '../helpers/proxy.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Test = Record<'ok' | 'notOk' | 'same' | 'equal', (...args: any[]) => unknown>;

const cluster = await withCluster(t, { maxConnections: 20, users: ['tx', 'sess'] });
await cluster.query('create table if not exists landed (who text)');
await cluster.query('grant all on landed to public');

const services = [
  { name: 'tx', match: { user: 'tx' }, budget: 1, poolMode: 'transaction', queue: { timeoutMs: 10_000 } },
  { name: 'sess', match: { user: 'sess' }, budget: 1, poolMode: 'session', queue: { timeoutMs: 10_000 } },
];

/** The server pids the proxy holds for a service, as the database sees them. */
async function backends(service: string): Promise<number[]> {
  const rows = await cluster.query<{ pid: number }>(`select pid from pg_stat_activity where application_name = 'pgbudget:${service}' order by pid`);
  return rows.map((r) => r.pid);
}

/** Logs in raw as `user`, runs `sql` and returns the client once it holds the server connection. */
async function holding(proxy: TestProxy, user: string, sql: string) {
  const c = rawClient(proxy.port);
  await c.login(user);
  c.socket.write(simpleQuery(sql));
  return c;
}

/** After the client vanished: slot back, its server connection gone, the next client served cleanly. */
async function afterVanish(t: Test, proxy: TestProxy, user: string, before: number[], label: string): Promise<void> {
  await assertNoLeaks(t, proxy, 3000);
  const deadline = Date.now() + 3000;
  while ((await backends(user)).some((p) => before.includes(p)) && Date.now() < deadline) await sleep(20);
  t.same((await backends(user)).filter((p) => before.includes(p)), [], `${label}: its server connection was closed, not reused`);
  const c = new pg.Client({ connectionString: proxy.url(user) });
  await c.connect();
  const r = await c.query('select pg_backend_pid() as pid');
  t.notOk(before.includes(r.rows[0].pid), `${label}: the next client gets a fresh server connection`);
  t.equal((await c.query(`select count(*)::int as n from landed where who = '${user}-${label}'`)).rows[0].n, 0, `${label}: nothing of it was committed`);
  await c.end();
}

for (const user of ['tx', 'sess']) {
  t.test(`${user}: vanished mid-transaction, mid-COPY and mid-result`, async (t) => {
    const proxy = await startProxy(t, cluster, { services });

    const inTx = await holding(proxy, user, `begin; insert into landed values ('${user}-tx')`);
    await inTx.until(() => inTx.count('Z') >= 2);
    const txPids = await backends(user);
    inTx.socket.destroy();
    await afterVanish(t, proxy, user, txPids, 'tx');

    const inCopy = await holding(proxy, user, 'copy landed from stdin');
    await inCopy.until(() => inCopy.count('G') === 1);
    inCopy.socket.write(frontend('d', `${user}-copy\n`));
    const copyPids = await backends(user);
    await sleep(50);
    inCopy.socket.destroy();
    await afterVanish(t, proxy, user, copyPids, 'copy');

    // A result of about 100 MB: the proxy pauses the server while the client does not read, then the client goes.
    const big = rawClient(proxy.port);
    await big.login(user);
    big.socket.pause();
    big.socket.write(simpleQuery(`select repeat('x', 1000) from generate_series(1, 100000)`));
    await sleep(500);
    const bigPids = await backends(user);
    big.socket.destroy();
    await afterVanish(t, proxy, user, bigPids, 'result');
  });
}

// ---- without a FIN: a client host cut off the network ----

/** A network namespace with a veth pair to it, made by this test; null when namespaces cannot be made here. */
async function netns(): Promise<{ hostAddress: string; exec: string[]; cut(): Promise<void>; remove(): Promise<void> } | null> {
  const id = process.pid % 100_000;
  const ns = `pgbt-${id}`;
  const host = `pgbh${id}`;
  const peer = `pgbc${id}`;
  const octet = (process.pid % 250) + 1;
  const hostAddress = `10.231.${octet}.1`;
  const clientAddress = `10.231.${octet}.2`;
  await run('ip', ['netns', 'del', ns]);
  await run('ip', ['link', 'del', host]);
  const steps = [
    ['netns', 'add', ns],
    ['link', 'add', host, 'type', 'veth', 'peer', 'name', peer],
    ['link', 'set', peer, 'netns', ns],
    ['addr', 'add', `${hostAddress}/30`, 'dev', host],
    ['link', 'set', host, 'up'],
    ['netns', 'exec', ns, 'ip', 'addr', 'add', `${clientAddress}/30`, 'dev', peer],
    ['netns', 'exec', ns, 'ip', 'link', 'set', peer, 'up'],
    ['netns', 'exec', ns, 'ip', 'link', 'set', 'lo', 'up'],
  ];
  for (const args of steps) {
    const r = await run('ip', args);
    if (r.code !== 0) {
      await run('ip', ['netns', 'del', ns]);
      await run('ip', ['link', 'del', host]);
      return null;
    }
  }
  return {
    hostAddress,
    exec: ['ip', 'netns', 'exec', ns],
    // The client's side goes down: nothing more crosses, and no FIN or RST is ever sent.
    cut: async () => void (await run('ip', ['netns', 'exec', ns, 'ip', 'link', 'set', peer, 'down'])),
    remove: async () => {
      await run('ip', ['netns', 'del', ns]);
      await run('ip', ['link', 'del', host]);
    },
  };
}

/** psql in the namespace, reading statements from a pipe; resolves once `sql` has answered. */
async function psqlIn(exec: string[], url: string, sql: string): Promise<ChildProcess> {
  const child = spawn(exec[0], [...exec.slice(1), 'psql', '-X', '-A', '-t', '-d', url], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (d) => {
      out += d;
      if (out.includes('holding')) resolve();
    });
    child.on('exit', (code) => reject(new Error(`psql exited with ${code} before holding`)));
    child.stdin!.write(`${sql}; select 'holding';\n`);
  });
  return child;
}

const KEEPALIVE_MS = 1000;
/** What Linux takes to give up on a silent peer with keepalive on: the idle time, then 10 probes 1 s apart (libuv's settings). */
const NO_FIN_BOUND_MS = KEEPALIVE_MS + 10 * 1000 + 3000;

t.test('vanished without a FIN (network cut): keepalive frees the slot within tcpKeepaliveMs + 10 s', async (t) => {
  const net = await netns();
  if (!net) {
    t.plan(0, 'skipped: network namespaces cannot be created here (ip netns add failed)');
    return;
  }
  t.teardown(() => net.remove());
  const proxy = await startProxy(t, cluster, { listen: `${net.hostAddress}:0`, tcpKeepaliveMs: KEEPALIVE_MS, services });
  const url = (user: string) => `postgres://${user}@${net.hostAddress}:${proxy.port}/postgres`;
  // A session-mode client holding its server connection between statements,
  // and a transaction-mode client inside a transaction.
  const idle = await psqlIn(net.exec, url('sess'), 'select 1');
  const inTx = await psqlIn(net.exec, url('tx'), `begin; insert into landed values ('tx-nofin')`);
  t.teardown(() => {
    idle.kill('SIGKILL');
    inTx.kill('SIGKILL');
  });
  const inTxPids = await backends('tx');
  t.equal((await backends('sess')).length + inTxPids.length, 2, 'both hold a server connection');
  // The clients' kernels acknowledge the last reply with a delayed ACK (up
  // to 200 ms). Cut before it and the proxy has bytes in flight: the kernel
  // then retransmits (bounded by tcp_retries2, minutes) instead of probing
  // with keepalive, which is the case this test is not about.
  await sleep(500);
  const cutAt = Date.now();
  await net.cut();
  const deadline = cutAt + NO_FIN_BOUND_MS + 5000;
  while (Date.now() < deadline) {
    const held = proxy.proxy.snapshot().services.reduce((n, s) => n + s.serverConnections.active, 0);
    if (held === 0) break;
    await sleep(100);
  }
  const took = Date.now() - cutAt;
  t.ok(took < NO_FIN_BOUND_MS, `both slots came back ${took} ms after the cut (bound ${NO_FIN_BOUND_MS} ms)`);
  await assertNoLeaks(t, proxy);
  // The session-mode client left between statements: its connection is reset (DISCARD ALL) and kept.
  // The one inside a transaction is closed, never handed out.
  const closeBy = Date.now() + 3000;
  while ((await backends('tx')).some((p) => inTxPids.includes(p)) && Date.now() < closeBy) await sleep(20);
  t.same((await backends('tx')).filter((p) => inTxPids.includes(p)), [], 'the server connection inside a transaction was closed');
  const c = new pg.Client({ connectionString: `postgres://tx@127.0.0.1:${cluster.port}/postgres` });
  await c.connect();
  t.equal((await c.query(`select count(*)::int as n from landed where who = 'tx-nofin'`)).rows[0].n, 0, 'the open transaction was rolled back');
  await c.end();
});
