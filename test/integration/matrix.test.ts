// One scenario, every client, both pool modes: budget 2, 20 clients at once.
// Per client: prepared statements reused across many transactions, an error
// inside a transaction followed by more work, COPY in and out, cancel,
// LISTEN/NOTIFY and SET (session state: pinned in transaction mode).
import t from 'tap';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import postgres from 'postgres';
import { withCluster } from '../helpers/cluster.js';
import { jdbcAvailable, psycopg2Available, runJdbcScenario, runPsycopg2Scenario } from '../helpers/foreign-clients.js';
import { assertNoLeaks, metric, psql, psqlCancelledSleep, run, scrape, sleep, startProxy, watchProxyBackends } from '../helpers/proxy.js';

const cluster = await withCluster(t, { maxConnections: 20, users: ['app'] });
await cluster.query('create table scen_items(client int, n int, note text)');
const tmp = await mkdtemp(path.join(os.tmpdir(), 'pgbudget-matrix-'));
t.teardown(() => rm(tmp, { recursive: true, force: true }));

const ITERATIONS = 12;

async function nodePostgresScenario(url: string, id: number): Promise<void> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    for (let i = 0; i < ITERATIONS; i++) {
      await c.query({ name: 'ins', text: 'insert into scen_items values ($1, $2, $3)', values: [id, i, 'pg'] });
      const { rows } = await c.query({ name: 'cnt', text: 'select count(*)::int as n from scen_items where client = $1', values: [id] });
      if (rows[0].n !== i + 1) throw new Error(`pg ${id}: count ${rows[0].n} after ${i + 1} inserts`);
    }
    await c.query('begin');
    await c.query({ name: 'ins', text: 'insert into scen_items values ($1, $2, $3)', values: [id, -1, 'rolled back'] });
    await c.query('select 1/0').then(
      () => {
        throw new Error('no division error');
      },
      (e: { code?: string }) => {
        if (e.code !== '22012') throw e;
      },
    );
    await c.query('rollback');
    const { rows } = await c.query({ name: 'cnt', text: 'select count(*)::int as n from scen_items where client = $1', values: [id] });
    if (rows[0].n !== ITERATIONS) throw new Error(`pg ${id}: rollback left ${rows[0].n}`);
    // Cancel a sleeping query through the proxy (CancelRequest with our BackendKeyData).
    const keys = c as unknown as { processID: number; secretKey: number };
    const sleeping = c.query('select pg_sleep(20)').then(
      () => {
        throw new Error('not cancelled');
      },
      (e: { code?: string }) => {
        if (e.code !== '57014') throw e;
      },
    );
    await sleep(300);
    const { serialize } = await import('pg-protocol/dist/serializer');
    const net = await import('node:net');
    const port = Number(new URL(url).port);
    await new Promise<void>((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port }, () => s.end(serialize.cancel(keys.processID, keys.secretKey)));
      s.on('close', () => resolve());
      s.on('error', () => resolve());
    });
    await sleeping;
    await c.query(`listen pg_ch_${id}`);
    const note = new Promise<string>((r) => c.once('notification', (n) => r(String(n.payload))));
    await c.query(`notify pg_ch_${id}, 'hello-${id}'`);
    if ((await note) !== `hello-${id}`) throw new Error('wrong notification');
    await c.query({ name: 'del', text: 'delete from scen_items where client = $1', values: [id] });
  } finally {
    await c.end();
  }
}

async function postgresJsScenario(url: string, id: number): Promise<void> {
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  let step = 'prepared';
  try {
    for (let i = 0; i < ITERATIONS; i++) {
      await sql`insert into scen_items values (${id}, ${i}, 'postgres.js')`;
      const [{ n }] = await sql`select count(*)::int as n from scen_items where client = ${id}`;
      if (n !== i + 1) throw new Error(`postgres.js ${id}: count ${n} after ${i + 1}`);
    }
    step = 'error in transaction';
    await sql
      .begin(async (tx) => {
        await tx`insert into scen_items values (${id}, -1, 'rolled back')`;
        await tx`select 1/0`;
      })
      .then(
        () => {
          throw new Error('no division error');
        },
        (e: { code?: string }) => {
          if (e.code !== '22012') throw e;
        },
      );
    const [{ n }] = await sql`select count(*)::int as n from scen_items where client = ${id}`;
    if (n !== ITERATIONS) throw new Error(`postgres.js ${id}: rollback left ${n}`);
    step = 'copy';
    const writable = await sql`copy scen_items from stdin`.writable();
    for (let i = 0; i < 500; i++) writable.write(`${id}\t${1000 + i}\tcopied\n`);
    await new Promise<void>((resolve, reject) => {
      writable.on('finish', () => resolve());
      writable.on('error', reject);
      writable.end();
    });
    let copied = '';
    // COPY takes no parameters: the id goes in as a literal.
    const readable = await sql.unsafe(`copy (select n from scen_items where client = ${Number(id)} and n >= 1000) to stdout`).readable();
    for await (const chunk of readable) copied += chunk;
    if (copied.trim().split('\n').length !== 500) throw new Error(`postgres.js ${id}: copy out ${copied.length}`);
    step = 'cancel';
    const q = sql`select pg_sleep(20)`;
    const pending = q.then(
      () => {
        throw new Error('not cancelled');
      },
      (e: { code?: string }) => {
        if (e.code !== '57014') throw e;
      },
    );
    await sleep(300);
    q.cancel();
    await pending;
    // postgres.js listens on a dedicated extra connection that stays open (and
    // pinned) until sql.end(); here that would hold half the budget of 2 for
    // the whole run, so its LISTEN/NOTIFY is tested on its own in
    // transaction.test.ts. Session state here: a SET, pinned.
    step = 'session state';
    await sql.unsafe(`set application_name = 'pj-${Number(id)}'`);
    const [{ application_name }] = await sql`show application_name`;
    if (application_name !== `pj-${id}`) throw new Error(`SET lost: ${application_name}`);
    step = 'cleanup';
    await sql`delete from scen_items where client = ${id}`;
  } catch (e) {
    throw new Error(`step ${step}: ${(e as Error).message}`);
  } finally {
    await sql.end({ timeout: 5 });
  }
}

async function psqlScenario(url: string, id: number): Promise<void> {
  const data = path.join(tmp, `in-${id}.tsv`);
  const out = path.join(tmp, `out-${id}.tsv`);
  await writeFile(data, Array.from({ length: 300 }, (_, i) => `${id}\t${i}\tpsql\n`).join(''));
  const script = [
    `\\copy scen_items from '${data}'`,
    `\\copy (select n from scen_items where client = ${id}) to '${out}'`,
    `select count(*) from scen_items where client = ${id};`,
    'begin;',
    `insert into scen_items values (${id}, -1, 'x');`,
    'select 1/0;',
    'rollback;',
    `select count(*) from scen_items where client = ${id};`,
    `prepare p_${id} as select count(*) from scen_items where client = $1;`,
    `execute p_${id}(${id});`,
    `deallocate p_${id};`,
    `listen psql_ch_${id};`,
    `notify psql_ch_${id}, 'hello-${id}';`,
    `delete from scen_items where client = ${id};`,
  ].join('\n');
  const r = await run('psql', ['-X', '-A', '-t', '-d', url, '-f', await writeScript(id, script)]);
  const counts = r.stdout.split('\n').filter((l) => /^\d+$/.test(l.trim()));
  if (counts.join(',') !== '300,300,300') throw new Error(`psql ${id}: counts ${counts.join(',')} stderr ${r.stderr}`);
  if (!/division by zero/.test(r.stderr)) throw new Error(`psql ${id}: no division error: ${r.stderr}`);
  if (!new RegExp(`notification "psql_ch_${id}" with payload "hello-${id}" received`).test(r.stdout + r.stderr)) {
    throw new Error(`psql ${id}: no notification: ${r.stdout}`);
  }
  // Cancel through libpq: SIGINT to psql while it sleeps.
  const c = await psqlCancelledSleep(url);
  if (!/canceling statement due to user request/.test(c.stderr)) throw new Error(`psql ${id}: cancel: ${c.stderr}`);
}

async function writeScript(id: number, script: string): Promise<string> {
  const file = path.join(tmp, `script-${id}.sql`);
  await writeFile(file, script + '\n');
  return file;
}

for (const mode of ['transaction', 'session'] as const) {
  t.test(`the shared scenario in ${mode} mode: budget 2, 20 clients at once`, async (t) => {
    const proxy = await startProxy(t, cluster, {
      services: [{ name: 'app', match: { user: 'app' }, budget: 2, poolMode: mode, queue: { timeoutMs: 120_000 } }],
    });
    const url = proxy.url('app');
    const watch = watchProxyBackends(cluster.url(), 'app');
    const jdbc = await jdbcAvailable();
    const psycopg2 = await psycopg2Available();
    t.ok(jdbc, 'the PostgreSQL JDBC driver and a JDK are available');
    t.ok(psycopg2, 'psycopg2 is available');
    const clients: [string, number, () => Promise<void>][] = [];
    let id = 0;
    const add = (kind: string, n: number, fn: (clientId: number) => Promise<void>) => {
      for (let k = 0; k < n; k++) {
        const clientId = ++id + (mode === 'session' ? 100 : 0);
        clients.push([kind, clientId, () => fn(clientId)]);
      }
    };
    const foreign = (runner: typeof runJdbcScenario) => async (clientId: number) => {
      const r = await runner({ host: '127.0.0.1', port: proxy.port, user: 'app', database: 'postgres', clientId, iterations: ITERATIONS, timeoutMs: 150_000 });
      if (r.code !== 0 || !r.stdout.trim().endsWith(`SCENARIO OK ${clientId}`)) throw new Error(`exit ${r.code}: ${r.stderr.slice(-600)}`);
    };
    add('node-postgres', 4, (c) => nodePostgresScenario(url, c));
    add('postgres.js', 4, (c) => postgresJsScenario(url, c));
    add('psql', 4, (c) => psqlScenario(url, c));
    if (jdbc) add('jdbc', 4, foreign(runJdbcScenario));
    if (psycopg2) add('psycopg2', 4, foreign(runPsycopg2Scenario));
    const started = Date.now();
    const results = await Promise.all(
      clients.map(([kind, clientId, fn]) =>
        fn().then(
          () => [kind, clientId, 'ok'] as const,
          (e: Error) => [kind, clientId, e.message] as const,
        ),
      ),
    );
    const byKind = new Map<string, string[]>();
    for (const [kind, , outcome] of results) byKind.set(kind, [...(byKind.get(kind) ?? []), outcome]);
    for (const [kind, outcomes] of byKind) {
      t.same(outcomes.filter((o) => o !== 'ok'), [], `${kind}: ${outcomes.length} clients passed the scenario`);
    }
    const max = await watch.stop();
    t.ok(max <= 2, `never more than the budget of 2 server connections (max ${max})`);
    const { body } = await scrape(proxy.adminAddress.port);
    const pins = ['set', 'listen', 'prepare', 'advisory_lock', 'temp_table', 'cursor_with_hold']
      .map((reason) => `${reason}=${metric(body, `pgbudget_pins_total{service="app",reason="${reason}"}`) ?? 0}`)
      .join(' ');
    t.comment(`${mode}: ${clients.length} clients in ${Date.now() - started} ms; pins: ${pins}`);
    await assertNoLeaks(t, proxy, 10_000);
  });
}

t.test('pgbench -M simple, extended and prepared in both modes', async (t) => {
  const init = await run('pgbench', ['-i', '-s', '1', '-q', '-h', '127.0.0.1', '-p', String(cluster.port), '-U', 'postgres', 'postgres']);
  t.equal(init.code, 0, init.stderr);
  for (const mode of ['transaction', 'session'] as const) {
    const proxy = await startProxy(t, cluster, {
      services: [{ name: 'bench', budget: 2, poolMode: mode, queue: { timeoutMs: 60_000 } }],
      defaultService: 'bench',
    });
    for (const protocol of ['simple', 'extended', 'prepared']) {
      const clients = mode === 'session' ? '2' : '20';
      // One thread per client: pgbench prepares with the blocking PQprepare, and a
      // thread blocked on a queued client would stall its other clients mid-transaction.
      const r = await run('pgbench', ['-M', protocol, '-c', clients, '-j', clients, '-t', '30', '-h', '127.0.0.1', '-p', String(proxy.port), '-U', 'postgres', 'postgres']);
      t.equal(r.code, 0, `${mode} ${protocol}: ${r.stderr.slice(-400)}`);
      t.match(r.stdout, /number of failed transactions: 0 /, `${mode} -M ${protocol}: none failed`);
    }
    await assertNoLeaks(t, proxy);
  }
  const r = await psql(cluster.url(), 'select 1');
  t.equal(r.code, 0);
});
