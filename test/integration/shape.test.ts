// Prepared statements keep the result shape the client described: through
// pgbudget's transaction pooling a client sees what it would see on a direct
// connection: the same rows, or 0A000 "cached plan must not change result
// type" where PostgreSQL sends it to that client. Never rows in another
// shape, never another client's stale plan. Each scenario runs directly and
// through pgbudget, and the two must agree.
import t from 'tap';
import pg from 'pg';
import postgres from 'postgres';
import { withCluster } from '../helpers/cluster.js';
import { assertNoLeaks, startProxy } from '../helpers/proxy.js';
import { jdbcAvailable, runJava } from '../helpers/foreign-clients.js';

const cluster = await withCluster(t, { maxConnections: 20, users: ['app'] });
const proxy = await startProxy(t, cluster, {
  serverApplicationName: 'client',
  services: [{ name: 'app', match: { user: 'app' }, budget: 4, poolMode: 'transaction', queue: { timeoutMs: 10_000 } }],
});
const targets = [
  { name: 'directly', url: (db: string) => cluster.url('app', db) },
  { name: 'through pgbudget', url: (db: string) => proxy.url('app', db) },
];

/** A fresh database per scenario and target, so each starts from the same schema. */
let databases = 0;
async function freshDatabase(): Promise<string> {
  const db = `shape_${++databases}`;
  await cluster.query(`create database ${db} owner app`);
  return db;
}

/** A client holding a server connection inside a transaction, until release(). */
async function holdOne(url: string) {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  await c.query('begin');
  await c.query('select 1');
  return {
    async release() {
      await c.query('commit');
      await c.end();
    },
  };
}

t.test('postgres.js: a table recreated between uses, then run on a fresh server connection', async (t) => {
  for (const [label, create, insert, expected] of [
    ['columns replaced', 'create table t (a int, b bool)', 'insert into t values (2, true)', [{ a: 2, b: true }]],
    // postgres.js reads a NULL in an int[] as NaN, directly too.
    ['int becomes int[]', 'create table t (x int[])', "insert into t values ('{1,NULL,3}')", [{ x: [1, NaN, 3] }]],
  ] as const) {
    const results: unknown[] = [];
    for (const target of targets) {
      const db = await freshDatabase();
      const url = target.url(db);
      const a = postgres(url, { max: 1, onnotice: () => {} });
      await a`create table t (x int, y int, z int)`;
      await a`insert into t values (1, 2, 3)`;
      t.same([...(await a`select * from t`)], [{ x: 1, y: 2, z: 3 }], `${label}, ${target.name}: first run`);
      await a`drop table t`;
      await a.unsafe(create);
      await a.unsafe(insert);
      // B holds the only idle server connection: A's next transaction gets a fresh one.
      const b = await holdOne(url);
      try {
        results.push([...(await a`select * from t`)]);
      } catch (err) {
        results.push({ error: (err as { code?: string }).code, message: (err as Error).message });
      }
      await b.release();
      await a.end();
    }
    t.same(results[0], expected, `${label}: directly, postgres.js prepares again on 0A000 and gets the new rows`);
    t.same(results[1], results[0], `${label}: through pgbudget, the same`);
  }
  await assertNoLeaks(t, proxy);
});

t.test("node-postgres: another client's stale plan of the same named statement is never used", async (t) => {
  for (const target of targets) {
    const db = await freshDatabase();
    const url = target.url(db);
    const admin = new pg.Client({ connectionString: url });
    await admin.connect();
    await admin.query('create table t (x int, y int)');
    await admin.query('insert into t values (1, 2)');
    const q = { name: 'q', text: 'select *, pg_backend_pid() as pid from t' };
    const a = new pg.Client({ connectionString: url });
    const b = new pg.Client({ connectionString: url });
    await a.connect();
    await b.connect();
    // A prepares q; the table changes; B prepares q, on another server
    // connection (a blocker holds A's, the only idle one).
    const first = await a.query(q);
    t.same(first.rows.map(({ x, y }) => ({ x, y })), [{ x: 1, y: 2 }], `${target.name}: A's first run`);
    await admin.query('drop table t');
    await admin.query('create table t (a text)');
    await admin.query("insert into t values ('new')");
    const held = await holdOne(url);
    const bFirst = await b.query(q);
    await held.release();
    t.same(bFirst.rows.map(({ a }) => ({ a })), [{ a: 'new' }], `${target.name}: B's first run`);
    // B runs q again and again, every other time while another client holds
    // one server connection, until it has run on the one where A prepared q.
    const pids = new Set<number>();
    for (let i = 0; i < 8; i++) {
      const blocker = i % 2 === 1 ? await holdOne(url) : null;
      try {
        const r = await b.query(q);
        t.same(r.rows.map(({ a }) => ({ a })), [{ a: 'new' }], `${target.name}: B's run ${i + 2} gets the rows in its shape`);
        pids.add(r.rows[0].pid);
      } catch (err) {
        t.fail(`${target.name}: B's run ${i + 2}: ${(err as Error).message}`);
      }
      await blocker?.release();
      if (pids.has(first.rows[0].pid)) break;
    }
    if (target.name !== 'directly') t.ok(pids.has(first.rows[0].pid), "B ran on the server connection that holds A's stale plan");
    // A, whose statement is stale, gets PostgreSQL's own 0A000, as it would directly.
    const aErr = await a.query(q).then(
      () => null,
      (e: { code?: string; message: string; routine?: string }) => e,
    );
    t.equal(aErr?.code, '0A000', `${target.name}: A's stale statement: 0A000`);
    t.equal(aErr?.message, 'cached plan must not change result type', `${target.name}: in PostgreSQL's words`);
    t.equal(aErr?.routine, 'RevalidateCachedQuery', `${target.name}: from its plan cache`);
    await Promise.all([a.end(), b.end(), admin.end()]);
  }
  await assertNoLeaks(t, proxy);
});

t.test('node-postgres: inside a transaction, a refused statement leaves it failed, as PostgreSQL does', async (t) => {
  const outcomes: string[][] = [];
  for (const target of targets) {
    const db = await freshDatabase();
    const url = target.url(db);
    const a = new pg.Client({ connectionString: url });
    await a.connect();
    await a.query('create table t (x int)');
    await a.query({ name: 'q', text: 'select * from t' });
    await a.query('drop table t; create table t (y text)');
    const b = await holdOne(url);
    const seen: string[] = [];
    await a.query('begin');
    for (const step of [q(), 'select 1', 'rollback', q()]) {
      try {
        const r = await a.query(step);
        seen.push(`ok ${r.command}`);
      } catch (err) {
        seen.push(`${(err as { code?: string }).code}`);
      }
    }
    outcomes.push(seen);
    await b.release();
    await a.end();
  }
  t.same(outcomes[0], ['0A000', '25P02', 'ok ROLLBACK', '0A000'], 'directly');
  t.same(outcomes[1], outcomes[0], 'through pgbudget, the same');
  await assertNoLeaks(t, proxy);

  function q() {
    return { name: 'q', text: 'select * from t' } as unknown as string;
  }
});

t.test('JDBC (pgjdbc, server-prepared statements): the same as directly', async (t) => {
  if (!(await jdbcAvailable())) {
    t.fail('JDBC is not available (java, javac and the PostgreSQL JDBC driver; npm test installs them)');
    return;
  }
  const outputs: string[] = [];
  for (const target of targets) {
    const db = await freshDatabase();
    const url = new URL(target.url(db));
    const r = await runJava('ShapeScenario', [url.hostname, url.port, 'app', db]);
    t.equal(r.code, 0, `${target.name}: the scenario ran`, { stderr: r.stderr.slice(-2000) });
    outputs.push(r.stdout.trim());
  }
  t.match(outputs[0], /after the table was recreated: \(a=2, b=t\)/, 'directly, pgjdbc prepares again by itself outside a transaction');
  t.match(outputs[0], /in a transaction, after the table changed again: 0A000/, 'and inside one the 0A000 reaches the application');
  t.equal(outputs[1], outputs[0], 'through pgbudget, the same steps, rows and errors');
  await assertNoLeaks(t, proxy);
});
