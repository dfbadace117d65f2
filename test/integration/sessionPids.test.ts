// Session mode binds its server connection at login, so a client sees the
// real process id of its backend: BackendKeyData carries it (with a secret of
// pgbudget's own), pg_backend_pid() matches it, a notification names the
// sender by it, and pg_terminate_backend() on it ends that session. Cancels
// are still routed by pgbudget, and a key of a session that has ended
// cancels nothing, even when its backend serves someone else now. Clients
// queue at login, with the queue's usual limits and errors.
import t from 'tap';
import pg from 'pg';
import postgres from 'postgres';
import { withCluster } from '../helpers/cluster.js';
import { psycopg2Available, runPython } from '../helpers/foreign-clients.js';
import { sendCancel } from '../helpers/load.js';
import { assertNoLeaks, sleep, startProxy } from '../helpers/proxy.js';

const cluster = await withCluster(t, { maxConnections: 20, users: ['app'] });

const session = (budget: number, queue: Record<string, unknown> = {}) => ({
  serverApplicationName: 'client',
  services: [{ name: 'app', match: { user: 'app' }, budget, poolMode: 'session', queue: { timeoutMs: 10_000, ...queue } }],
});

/** BackendKeyData as node-postgres kept it. */
const keyOf = (c: pg.Client) => c as unknown as { processID: number; secretKey: number };

async function connect(url: string): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: url });
  c.on('error', () => undefined);
  await c.connect();
  return c;
}

const backendPid = async (c: pg.Client) => (await c.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0].pid;

t.test('node-postgres: the process id is the server backend, and a notification names its sender by it', async (t) => {
  const proxy = await startProxy(t, cluster, session(4));
  const a = await connect(proxy.url('app'));
  const b = await connect(proxy.url('app'));
  t.equal(keyOf(a).processID, await backendPid(a), "A's BackendKeyData is its backend's pid");
  t.equal(keyOf(b).processID, await backendPid(b));
  t.not(keyOf(a).processID, keyOf(b).processID);
  const got = new Promise<pg.Notification>((resolve) => a.on('notification', resolve));
  await a.query('listen chan');
  await b.query("notify chan, 'hi'");
  const n = await got;
  t.match(n, { channel: 'chan', payload: 'hi', processId: keyOf(b).processID }, "the notification carries B's pid, as B knows it");
  // A terminates B's backend by the pid it knows: B's session ends with the server's own error.
  const ended = new Promise<Error>((resolve) => b.on('error', resolve));
  t.same((await a.query('select pg_terminate_backend($1) as ok', [keyOf(b).processID])).rows, [{ ok: true }]);
  const err = (await Promise.race([ended, b.query('select 1').then(() => null, (e: Error) => e)])) as (Error & { code?: string }) | null;
  t.ok(err !== null, 'B is gone');
  t.match(err, { code: '57P01', message: 'terminating connection due to administrator command' }, "the server's own words");
  await a.end();
  await assertNoLeaks(t, proxy);
});

t.test('psycopg2: get_backend_pid() is pg_backend_pid(), notifications and pg_terminate_backend agree', { skip: !(await psycopg2Available()) && 'psycopg2 is not installed' }, async (t) => {
  const proxy = await startProxy(t, cluster, session(4));
  const pids = async (port: number) => {
    const run = await runPython('pids.py', [JSON.stringify({ host: '127.0.0.1', port, user: 'app', dbname: 'postgres' })], 30_000);
    t.equal(run.code, 0, run.stderr);
    return JSON.parse(run.stdout.trim().split('\n').pop()!);
  };
  const out = await pids(proxy.port);
  const direct = await pids(cluster.port);
  t.equal(out.a.keyData, out.a.server, 'A: BackendKeyData = pg_backend_pid()');
  t.equal(out.b.keyData, out.b.server, 'B: BackendKeyData = pg_backend_pid()');
  t.match(out.notify, { pid: out.b.server, channel: 'pids_test', payload: 'hello' }, "the notification carries B's pid");
  t.equal(out.terminated, true);
  t.same(out.b_after, direct.b_after, `B's next statement fails as on a direct connection: ${JSON.stringify(direct.b_after)}`);
  await assertNoLeaks(t, proxy);
});

t.test('postgres.js: cancel by the real pid, and LISTEN', async (t) => {
  const proxy = await startProxy(t, cluster, session(4));
  const sql = postgres({ host: '127.0.0.1', port: proxy.port, user: 'app', database: 'postgres', max: 1, onnotice: () => undefined });
  t.teardown(() => sql.end({ timeout: 1 }));
  const [{ pid }] = await sql<{ pid: number }[]>`select pg_backend_pid() as pid`;
  t.ok(pid > 0 && pid < 1 << 22, `a real pid (${pid})`);
  const q = sql`select pg_sleep(10)`;
  setTimeout(() => q.cancel(), 300);
  const t0 = Date.now();
  await t.rejects(q, { code: '57014', message: 'canceling statement due to user request' });
  t.ok(Date.now() - t0 < 5000, 'cancelled at once');
  const heard = new Promise<string>((resolve) => {
    void sql.listen('chan2', (payload) => resolve(payload));
  });
  await sleep(200);
  const other = await connect(proxy.url('app'));
  await other.query("notify chan2, 'from another session'");
  t.equal(await heard, 'from another session');
  await other.end();
  await sql.end({ timeout: 1 });
  await assertNoLeaks(t, proxy);
});

t.test("a finished session's key cancels nothing, even with its backend serving another client", async (t) => {
  const proxy = await startProxy(t, cluster, session(1));
  const x = await connect(proxy.url('app'));
  const old = { ...keyOf(x) };
  await x.end();
  // Budget 1: the next client gets the same backend, reset.
  const y = await connect(proxy.url('app'));
  t.equal(keyOf(y).processID, old.processID, 'the same backend, so the same pid');
  t.not(keyOf(y).secretKey, old.secretKey, 'but a secret of its own');
  const sleeping = y.query('select pg_sleep(0.8) as done');
  await sleep(200);
  await sendCancel(proxy.port, { processID: old.processID, secretKey: old.secretKey } as unknown as pg.Client);
  t.same((await sleeping).rows, [{ done: '' }], "the old key did not cancel the new client's statement");
  const again = y.query('select pg_sleep(10)').then(
    () => null,
    (e: Error) => e,
  );
  await sleep(200);
  await sendCancel(proxy.port, y);
  t.match(await again, { code: '57014' }, 'its own key does');
  await y.end();
  await assertNoLeaks(t, proxy);
});

t.test('clients queue at login: served when a session ends, or refused with the queue error', async (t) => {
  const proxy = await startProxy(t, cluster, session(1, { timeoutMs: 400 }));
  const first = await connect(proxy.url('app'));
  const t0 = Date.now();
  const late = new pg.Client({ connectionString: proxy.url('app') });
  late.on('error', () => undefined);
  await t.rejects(late.connect(), { code: '53300', message: /^pgbudget: service "app" waited \d+ ms for a server connection \(budget 1, 1 in use, \d+ waiting\)$/ });
  t.ok(Date.now() - t0 >= 350, 'after its queue timeout');
  const waiting = connect(proxy.url('app'));
  await sleep(200);
  t.equal(proxy.proxy.snapshot().services[0].clients.waiting, 1, 'the next one waits at login');
  await first.end();
  const second = await waiting;
  t.equal(keyOf(second).processID, await backendPid(second), 'and is welcomed by its backend once the first has left');
  await second.end();
  await assertNoLeaks(t, proxy);
});
