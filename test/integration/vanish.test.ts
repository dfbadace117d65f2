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

// Two more services for the clients that have bytes in flight when the link goes (the first match wins).
const inFlightServices = [
  { name: 'tx-inflight', match: { user: 'tx', applicationName: 'inflight' }, budget: 1, poolMode: 'transaction', queue: { timeoutMs: 10_000 } },
  { name: 'sess-inflight', match: { user: 'sess', applicationName: 'inflight' }, budget: 1, poolMode: 'session', queue: { timeoutMs: 10_000 } },
  ...services,
];

t.test('vanished without a FIN (network cut): keepalive, or TCP_USER_TIMEOUT with bytes in flight, frees the slot within tcpKeepaliveMs + 10 s', async (t) => {
  const net = await netns();
  if (!net) {
    t.plan(0, 'skipped: network namespaces cannot be created here (ip netns add failed)');
    return;
  }
  t.teardown(() => net.remove());
  // No tcpUserTimeoutMs: the default, keepalive's own bound.
  const proxy = await startProxy(t, cluster, { listen: `${net.hostAddress}:0`, tcpKeepaliveMs: KEEPALIVE_MS, services: inFlightServices });
  const url = (user: string, app = 'psql') => `postgres://${user}@${net.hostAddress}:${proxy.port}/postgres?application_name=${app}`;
  // Nothing in flight when the link goes: a session-mode client holding its
  // server connection between statements, and a transaction-mode client
  // inside a transaction. Keepalive notices them.
  const idle = await psqlIn(net.exec, url('sess'), 'select 1');
  const inTx = await psqlIn(net.exec, url('tx'), `begin; insert into landed values ('tx-nofin')`);
  // Bytes in flight: a session-mode client listening on a channel (notified
  // after the cut), and a transaction-mode client whose statement answers
  // after the cut. The kernel retransmits to them and keepalive never
  // probes; without TCP_USER_TIMEOUT their slots would wait for
  // tcp_retries2 (about 15 minutes).
  const listening = await psqlIn(net.exec, url('sess', 'inflight'), 'listen vanish_ch');
  const sleeping = await psqlIn(net.exec, url('tx', 'inflight'), `begin; insert into landed values ('tx-inflight')`);
  t.teardown(() => {
    for (const child of [idle, inTx, listening, sleeping]) child.kill('SIGKILL');
  });
  const txPids = [...(await backends('tx')), ...(await backends('tx-inflight'))];
  t.equal((await backends('sess')).length + (await backends('sess-inflight')).length + txPids.length, 4, 'all four hold a server connection');
  sleeping.stdin!.write('select pg_sleep(1);\n');
  // The clients' kernels acknowledge the last reply with a delayed ACK (up
  // to 200 ms): the cut comes after it, so nothing is in flight to the
  // first two (the keepalive case), and the statement of the fourth runs.
  await sleep(500);
  const cutAt = Date.now();
  await net.cut();
  await cluster.query(`notify vanish_ch, '${'x'.repeat(100)}'`);
  const deadline = cutAt + NO_FIN_BOUND_MS + 5000;
  const cameBack = new Map<string, number>();
  while (Date.now() < deadline && cameBack.size < 4) {
    for (const s of proxy.proxy.snapshot().services) {
      if (s.name.startsWith('pgbudget:') || cameBack.has(s.name)) continue;
      if (s.serverConnections.active === 0) cameBack.set(s.name, Date.now() - cutAt);
    }
    await sleep(100);
  }
  const took = Object.fromEntries(cameBack);
  const last = Math.max(...cameBack.values());
  t.equal(cameBack.size, 4, `every slot came back: ${JSON.stringify(took)} ms after the cut`);
  t.ok(last < NO_FIN_BOUND_MS, `the last ${last} ms after the cut (bound ${NO_FIN_BOUND_MS} ms)`);
  await assertNoLeaks(t, proxy);
  // The session-mode clients left between statements: their connections are reset (DISCARD ALL) and kept.
  // Those inside a transaction are closed, never handed out.
  const closeBy = Date.now() + 3000;
  const stillThere = async () => [...(await backends('tx')), ...(await backends('tx-inflight'))].filter((p) => txPids.includes(p));
  while ((await stillThere()).length > 0 && Date.now() < closeBy) await sleep(20);
  t.same(await stillThere(), [], 'the server connections inside a transaction were closed');
  const c = new pg.Client({ connectionString: `postgres://tx@127.0.0.1:${cluster.port}/postgres` });
  await c.connect();
  t.equal((await c.query(`select count(*)::int as n from landed where who in ('tx-nofin', 'tx-inflight')`)).rows[0].n, 0, 'the open transactions were rolled back');
  await c.end();
});
