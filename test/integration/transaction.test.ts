// Transaction pooling that real clients survive: named prepared statements
// across server connections, session state (pinned or refused), pipelining,
// and a randomized check that every result belongs to the client that asked.
import t from 'tap';
import pg from 'pg';
import postgres from 'postgres';
import { withCluster } from '../helpers/cluster.js';
import {
  assertNoLeaks,
  frontend,
  metric,
  psql,
  rawClient,
  run,
  scrape,
  simpleQuery,
  sleep,
  startProxy,
  watchProxyBackends,
} from '../helpers/proxy.js';

const cluster = await withCluster(t, { maxConnections: 20, users: ['app', 'strict'] });
const proxy = await startProxy(t, cluster, {
  maxPreparedStatements: 4,
  services: [
    { name: 'app', match: { user: 'app' }, budget: 2, poolMode: 'transaction', queue: { timeoutMs: 20_000 } },
    { name: 'strict', match: { user: 'strict' }, budget: 2, poolMode: 'transaction', onSessionState: 'error' },
  ],
});

t.test('node-postgres named statements are reused across transactions on different server connections', async (t) => {
  const watch = watchProxyBackends(cluster.url(), 'app');
  const clients = await Promise.all(
    Array.from({ length: 20 }, async () => {
      const c = new pg.Client({ connectionString: proxy.url('app') });
      await c.connect();
      return c;
    }),
  );
  const pidsSeen = new Set<number>();
  await Promise.all(
    clients.map(async (c, id) => {
      for (let i = 0; i < 15; i++) {
        const r = await c.query({ name: 'add', text: 'select $1::int + $2::int as n, pg_backend_pid() as pid', values: [id, i] });
        if (r.rows[0].n !== id + i) throw new Error(`client ${id} got ${r.rows[0].n} for ${id}+${i}`);
        pidsSeen.add(r.rows[0].pid);
      }
    }),
  );
  t.equal(pidsSeen.size, 2, 'statements ran on both server connections of the budget');
  t.ok((await watch.stop()) <= 2, 'never more than the budget of 2');
  await Promise.all(clients.map((c) => c.end()));
  await assertNoLeaks(t, proxy);
});

t.test('postgres.js with its defaults (prepared statements, pipelining)', async (t) => {
  const sqls = Array.from({ length: 10 }, () => postgres(proxy.url('app'), { max: 1 }));
  const results = await Promise.all(
    sqls.map(async (sql, id) => {
      // Several queries at once on one connection: postgres.js pipelines them.
      const batch = await Promise.all(Array.from({ length: 8 }, (_, i) => sql`select ${id}::int as id, ${i}::int as i`));
      return batch.every((r, i) => r[0].id === id && r[0].i === i);
    }),
  );
  t.same(results, Array(10).fill(true), 'every pipelined result belongs to its client and query');
  // LISTEN on postgres.js's own listener connection: pinned, and the notification arrives.
  const got = new Promise<string>((resolve) => {
    void sqls[1].listen('pj_chan', (payload) => resolve(payload)).then(() => sqls[2].notify('pj_chan', 'from-postgres.js'));
  });
  t.equal(await got, 'from-postgres.js', 'postgres.js LISTEN/NOTIFY through transaction mode');
  const [{ n }] = await sqls[0]`select count(*)::int as n from pg_prepared_statements`;
  t.ok(n <= 4, `the server holds at most maxPreparedStatements (4) statements per connection (${n})`);
  await Promise.all(sqls.map((s) => s.end()));
  await assertNoLeaks(t, proxy);
});

t.test('pgbench -M prepared in transaction mode', async (t) => {
  const init = await run('pgbench', ['-i', '-s', '1', '-q', '-h', '127.0.0.1', '-p', String(proxy.port), '-U', 'app', 'postgres']);
  t.equal(init.code, 0, init.stderr);
  const tps: Record<string, number> = {};
  for (const mode of ['extended', 'prepared']) {
    const r = await run('pgbench', ['-M', mode, '-S', '-c', '10', '-j', '2', '-T', '3', '-h', '127.0.0.1', '-p', String(proxy.port), '-U', 'app', 'postgres']);
    t.equal(r.code, 0, `${mode}: ${r.stderr.slice(-400)}`);
    t.match(r.stdout, /number of failed transactions: 0 /, `${mode}: none failed`);
    tps[mode] = Number(/tps = ([\d.]+)/.exec(r.stdout)?.[1]);
  }
  t.comment(`pgbench -S, 10 clients, budget 2: extended ${tps.extended.toFixed(0)} tps, prepared ${tps.prepared.toFixed(0)} tps`);
  t.ok(tps.prepared > 0 && tps.extended > 0);
  await assertNoLeaks(t, proxy);
});

t.test('a client can never run another client\'s statement', async (t) => {
  const a = rawClient(proxy.port);
  const b = rawClient(proxy.port);
  await a.login('app');
  await b.login('app');
  const parse = (name: string, sql: string) => frontend('P', Buffer.from(`${name}\0${sql}\0\0\0`, 'latin1'));
  const bind = (name: string) => frontend('B', Buffer.from(`\0${name}\0\0\0\0\0\0\0`, 'latin1'));
  const execute = frontend('E', Buffer.from('\0\0\0\0\0', 'latin1'));
  a.socket.write(Buffer.concat([parse('secret', "select 'a-secret'"), frontend('S')]));
  await a.until(() => a.count('Z') === 2);
  // b guesses a's name, then the proxy's own naming scheme: both must fail.
  for (const guess of ['secret', '__pgbudget_1', '__pgbudget_2']) {
    b.socket.write(Buffer.concat([bind(guess), execute, frontend('S')]));
    await b.until(() => b.messages.filter((m) => m.type === 'Z').length === 2 + ['secret', '__pgbudget_1', '__pgbudget_2'].indexOf(guess));
  }
  const errors = b.messages.filter((m) => m.type === 'E').map((m) => m.body.toString('latin1'));
  t.equal(errors.length, 3, 'three errors');
  for (const e of errors) t.match(e, /C26000/, 'SQLSTATE 26000 invalid_sql_statement_name');
  t.notOk(b.messages.some((m) => m.type === 'D'), 'b never got a row');
  a.socket.write(Buffer.concat([bind('secret'), execute, frontend('S')]));
  await a.until(() => a.count('Z') === 3);
  t.match(a.messages.find((m) => m.type === 'D')?.body.toString('latin1'), /a-secret/, 'a still runs its own');
  a.socket.end(frontend('X'));
  b.socket.end(frontend('X'));
  await assertNoLeaks(t, proxy);
});

t.test('a name reused with other text is prepared afresh; Close and DEALLOCATE are honoured', async (t) => {
  const c = rawClient(proxy.port);
  await c.login('app');
  const parse = (name: string, sql: string) => frontend('P', Buffer.from(`${name}\0${sql}\0\0\0`, 'latin1'));
  const bind = (name: string) => frontend('B', Buffer.from(`\0${name}\0\0\0\0\0\0\0`, 'latin1'));
  const execute = frontend('E', Buffer.from('\0\0\0\0\0', 'latin1'));
  const close = (name: string) => frontend('C', Buffer.from(`S${name}\0`, 'latin1'));
  const rows = () => c.messages.filter((m) => m.type === 'D').map((m) => m.body.toString('latin1', 6));
  let z = 1;
  const send = async (...msgs: Buffer[]) => {
    c.socket.write(Buffer.concat([...msgs, frontend('S')]));
    z++;
    await c.until(() => c.count('Z') === z);
  };
  await send(parse('s', 'select 1'), bind('s'), execute);
  await send(close('s'), parse('s', 'select 2'), bind('s'), execute);
  t.same(rows(), ['1', '2'], 'after Close, the same name holds the new text');
  await send(bind('s'), execute);
  t.same(rows(), ['1', '2', '2']);
  c.socket.write(simpleQuery('deallocate s'));
  z++;
  await c.until(() => c.count('Z') === z);
  t.match(c.messages.filter((m) => m.type === 'C').at(-1)?.body.toString('latin1'), /^DEALLOCATE/);
  await send(bind('s'), execute);
  t.match(c.messages.filter((m) => m.type === 'E').at(-1)?.body.toString('latin1'), /prepared statement "s" does not exist/, 'gone after DEALLOCATE');
  // LRU: more statements than maxPreparedStatements (4), then all of them again.
  for (let i = 0; i < 7; i++) await send(parse(`p${i}`, `select ${100 + i}`), bind(`p${i}`), execute);
  for (let i = 0; i < 7; i++) await send(bind(`p${i}`), execute);
  t.same(rows().slice(-7), ['100', '101', '102', '103', '104', '105', '106'], 'evicted statements are prepared again on demand');
  c.socket.end(frontend('X'));
  await assertNoLeaks(t, proxy);
});

t.test('an error inside a transaction and inside an extended batch keeps the protocol in step', async (t) => {
  const c = new pg.Client({ connectionString: proxy.url('app') });
  await c.connect();
  await c.query('begin');
  await c.query({ name: 'ins', text: 'select $1::int as n', values: [1] });
  await t.rejects(c.query({ name: 'bad', text: 'select 1/$1::int', values: [0] }), { code: '22012' });
  await t.rejects(c.query({ name: 'ins', text: 'select $1::int as n', values: [2] }), { code: '25P02' }, 'aborted transaction');
  await c.query('rollback');
  t.same((await c.query({ name: 'ins', text: 'select $1::int as n', values: [3] })).rows, [{ n: 3 }]);
  t.same((await c.query({ name: 'bad', text: 'select 1/$1::int', values: [1] })).rows, [{ '?column?': 1 }]);
  await c.end();
  await assertNoLeaks(t, proxy);
});

t.test('session state pins the client (pin) or is refused with 0A000 (error)', async (t) => {
  const c = new pg.Client({ connectionString: proxy.url('app') });
  await c.connect();
  await c.query("set application_name = 'pinned-one'");
  await c.query('select 1');
  await sleep(50);
  const snap = proxy.proxy.snapshot().services.find((s) => s.name === 'app')!;
  t.equal(snap.serverConnections.active, 1, 'the pinned client keeps its server connection between transactions');
  t.same((await c.query('show application_name')).rows, [{ application_name: 'pinned-one' }]);
  // LISTEN/NOTIFY through pinning.
  await c.query('listen chan');
  const got = new Promise<string>((r) => c.on('notification', (n) => r(String(n.payload))));
  await c.query("notify chan, 'hi'");
  t.equal(await got, 'hi', 'the notification arrives');
  const { body } = await scrape(proxy.adminAddress.port);
  t.equal(metric(body, 'pgbudget_pins_total{service="app",reason="set"}'), 1);
  await c.end();
  await sleep(100);
  const d = new pg.Client({ connectionString: proxy.url('app') });
  await d.connect();
  const settings = await Promise.all([1, 2].map(() => d.query('show application_name')));
  t.notOk(settings.some((r) => r.rows[0].application_name === 'pinned-one'), 'its SET was reset before the connection was reused');
  await d.end();

  const r = await psql(proxy.url('strict'), "set search_path = public; select 1");
  t.not(r.code, 0);
  t.match(r.stderr, /ERROR:\s+pgbudget: SET keeps session state, which service "strict" \(transaction pooling\) cannot carry between transactions/);
  t.match(r.stderr, /HINT:\s+Use SET LOCAL/);
  const ok = await psql(proxy.url('strict'), 'begin; set local search_path = public; select 7; commit');
  t.match(ok.stdout, /7/, 'SET LOCAL is fine');
  const e = new pg.Client({ connectionString: proxy.url('strict') });
  await e.connect();
  await t.rejects(e.query('select pg_advisory_lock($1)', [1]), { code: '0A000' }, 'extended protocol too');
  t.same((await e.query('select 1 as n')).rows, [{ n: 1 }], 'and the session goes on');
  await e.end();
  await assertNoLeaks(t, proxy);
});

t.test('randomized: many clients, same statement names, different texts: every result is the asker\'s', async (t) => {
  const N = 30;
  const clients = await Promise.all(
    Array.from({ length: N }, async () => {
      const c = new pg.Client({ connectionString: proxy.url('app') });
      await c.connect();
      return c;
    }),
  );
  let checked = 0;
  await Promise.all(
    clients.map(async (c, id) => {
      for (let i = 0; i < 12; i++) {
        const which = (id * 7 + i) % 3;
        // Same names for everyone, texts that embed the client id.
        const r = await c.query({ name: `q${which}`, text: `select ${id}::int as id, $1::int * ${which + 1} as v`, values: [i] });
        if (r.rows[0].id !== id || r.rows[0].v !== i * (which + 1)) throw new Error(`client ${id} got ${JSON.stringify(r.rows[0])}`);
        checked++;
        if (Math.random() < 0.2) await sleep(Math.random() * 5);
        if (i % 5 === 4) {
          await c.query('begin');
          await c.query({ name: `q${which}`, text: `select ${id}::int as id, $1::int * ${which + 1} as v`, values: [i] });
          await c.query('commit');
        }
      }
    }),
  );
  t.equal(checked, N * 12, 'every result belonged to the client that asked');
  await Promise.all(clients.map((c) => c.end()));
  await assertNoLeaks(t, proxy);
});

t.test('startup parameters hold on whichever server connection a client gets', async (t) => {
  await cluster.query('create schema if not exists tenant_a; create schema if not exists tenant_b');
  const clients = [
    ['UTC', 'tenant_a'],
    ['America/New_York', 'tenant_b'],
    ['Asia/Tokyo', 'tenant_a'],
  ].map(([tz, schema]) => ({ tz, schema, c: new pg.Client({ connectionString: `${proxy.url('app')}?options=${encodeURIComponent(`-c search_path=${schema} -c timezone=${tz}`)}` }) }));
  for (const { c } of clients) await c.connect();
  for (let round = 0; round < 10; round++) {
    await Promise.all(
      clients.map(async ({ tz, schema, c }) => {
        const r = await c.query('select current_setting($1) as tz, current_setting($2) as sp', ['TimeZone', 'search_path']);
        if (r.rows[0].tz !== tz || r.rows[0].sp !== schema) throw new Error(`wanted ${tz} ${schema}, got ${JSON.stringify(r.rows[0])}`);
      }),
    );
  }
  t.pass('30 queries, each saw its own TimeZone and search_path');
  for (const { c } of clients) await c.end();
  const r = await psql(`${proxy.url('app')}?options=${encodeURIComponent('-c DateStyle=German')}`, "select '2024-03-05'::date");
  t.equal(r.stdout.trim(), '05.03.2024', 'psql options are applied');
  await assertNoLeaks(t, proxy);
});

t.test('review findings: unnamed statements, skipped Parses, refusals, DEALLOCATE, reserved names', async (t) => {
  const { SERVER_STATEMENT_PREFIX } = await import('../../src/client/serverStatements.js');
  const one = await startProxy(t, cluster, {
    maxPreparedStatements: 2,
    services: [
      { name: 'app', match: { user: 'app' }, budget: 1, poolMode: 'transaction', queue: { timeoutMs: 5000 } },
      { name: 'strict', match: { user: 'strict' }, budget: 1, poolMode: 'transaction', onSessionState: 'error' },
    ],
  });
  const parse = (name: string, sql: string) => frontend('P', Buffer.from(`${name}\0${sql}\0\0\0`, 'utf8'));
  const bind = (name: string) => frontend('B', Buffer.from(`\0${name}\0\0\0\0\0\0\0`, 'latin1'));
  const execute = frontend('E', Buffer.from('\0\0\0\0\0', 'latin1'));
  const sync = frontend('S');
  const flush = frontend('H');
  const rowsOf = (c: ReturnType<typeof rawClient>) => c.messages.filter((m) => m.type === 'D').map((m) => m.body.toString('utf8', 6));
  const lastError = (c: ReturnType<typeof rawClient>) => c.messages.filter((m) => m.type === 'E').at(-1)?.body.toString('utf8') ?? '';

  // 1. Budget 1: both clients share one server connection. B never runs A's unnamed statement.
  const a = rawClient(one.port);
  const b = rawClient(one.port);
  await a.login('app');
  await b.login('app');
  a.socket.write(Buffer.concat([parse('', "select 'A-secret'"), sync]));
  await a.until(() => a.count('Z') === 2);
  b.socket.write(Buffer.concat([bind(''), execute, sync]));
  await b.until(() => b.count('Z') === 2);
  t.same(rowsOf(b), [], 'B got no row of A');
  t.match(lastError(b), /C26000/, 'B: no unnamed statement of its own');
  b.socket.write(Buffer.concat([parse('', "select 'B-own'"), sync]));
  await b.until(() => b.count('Z') === 3);
  a.socket.write(Buffer.concat([bind(''), execute, sync]));
  await a.until(() => a.count('Z') === 3);
  t.same(rowsOf(a), ['A-secret'], 'A still runs its own unnamed statement after B replaced the server\'s');

  // 2. A Parse skipped after an error must not poison the cache for anyone.
  a.socket.write(Buffer.concat([parse('s2', 'select 2'), sync]));
  await a.until(() => a.count('Z') === 4);
  a.socket.write(Buffer.concat([parse('s3', 'select 3'), parse('s4', 'select 4'), sync])); // evicts s2 (max 2)
  await a.until(() => a.count('Z') === 5);
  a.socket.write(Buffer.concat([parse('', 'selec'), flush]));
  await a.until(() => a.count('E') === 1);
  a.socket.write(Buffer.concat([bind('s2'), execute, sync]));
  await a.until(() => a.count('Z') === 6);
  a.socket.write(Buffer.concat([bind('s2'), execute, sync]));
  await a.until(() => a.count('Z') === 7);
  t.same(rowsOf(a).slice(-1), ['2'], 's2 runs after a batch in which its injected Parse was skipped');

  // 5. DEALLOCATE hidden in a multi-statement query: the cache starts afresh.
  a.socket.write(simpleQuery('select 1; deallocate all'));
  await a.until(() => a.count('Z') === 8);
  b.socket.write(Buffer.concat([parse('bs', "select 'b-stmt'"), sync]));
  await b.until(() => b.count('Z') === 4);
  a.socket.write(Buffer.concat([bind('s3'), execute, sync]));
  await a.until(() => a.count('Z') === 9);
  t.same(rowsOf(a).slice(-1), ['3'], 'statements are prepared again after DEALLOCATE ALL in a multi-statement query');
  a.socket.write(simpleQuery('deallocate s4'));
  await a.until(() => a.count('Z') === 10);
  t.match(a.messages.filter((m) => m.type === 'C').at(-1)?.body.toString('latin1'), /^DEALLOCATE\0/, 'DEALLOCATE name answers DEALLOCATE');

  // 6. SQL cannot name the proxy's statements.
  b.socket.write(simpleQuery(`execute ${SERVER_STATEMENT_PREFIX}1`));
  await b.until(() => b.count('Z') === 5);
  t.match(lastError(b), /C42501.*belong to the proxy/s, 'EXECUTE of a proxy statement is refused');
  a.socket.end(frontend('X'));
  b.socket.end(frontend('X'));

  // 3. A refused Parse after an earlier error in the same batch: the client still gets its ReadyForQuery.
  const s = rawClient(one.port);
  await s.login('strict');
  s.socket.write(Buffer.concat([parse('', 'selec'), parse('', 'set search_path = x'), sync]));
  await s.until(() => s.count('Z') === 2, 3000);
  t.equal(s.count('E'), 1, 'one error: the first; the refusal was skipped like the rest of the batch');
  // 4. A refused Parse followed by Flush, then Sync: error, then ReadyForQuery, and the slot is free again.
  s.socket.write(Buffer.concat([parse('x', 'set search_path = x'), flush]));
  await s.until(() => s.count('E') === 2, 3000);
  t.match(lastError(s), /C0A000/);
  s.socket.write(sync);
  await s.until(() => s.count('Z') === 3, 3000);
  t.notOk(s.messages.some((m) => m.type === '1' || m.type === '2'), 'the proxy\'s own completions never reach the client');
  s.socket.end(frontend('X'));
  await assertNoLeaks(t, one);
});

t.test('DEALLOCATE of a statement the server connection lacks: DEALLOCATE, and inside a failed transaction 25P02, never a hang', async (t) => {
  const p = await startProxy(t, cluster, {
    maxPreparedStatements: 1,
    services: [{ name: 'app', match: { user: 'app' }, budget: 1, poolMode: 'transaction' }],
  });
  const parse = (name: string, sql: string) => frontend('P', Buffer.from(`${name}\0${sql}\0\0\0`, 'utf8'));
  const bind = (name: string) => frontend('B', Buffer.from(`\0${name}\0\0\0\0\0\0\0`, 'latin1'));
  const execute = frontend('E', Buffer.from('\0\0\0\0\0', 'latin1'));
  const sync = frontend('S');
  const a = rawClient(p.port);
  await a.login('app');
  const tag = () => a.messages.filter((m) => m.type === 'C').at(-1)?.body.toString('latin1');
  const lastError = () => a.messages.filter((m) => m.type === 'E').at(-1)?.body.toString('utf8') ?? '';
  let z = a.count('Z');
  const round = async (bytes: Buffer) => {
    a.socket.write(bytes);
    z++;
    await a.until(() => a.count('Z') === z, 3000);
  };
  // One statement per server connection: preparing y closes x on the server; the client still has both.
  await round(Buffer.concat([parse('x', 'select 1'), parse('y', 'select 2'), sync]));
  await round(simpleQuery('deallocate x'));
  t.equal(tag(), 'DEALLOCATE\0', 'answered as PostgreSQL answers it');
  await round(Buffer.concat([bind('x'), execute, sync]));
  t.match(lastError(), /C26000/, 'x is gone for the client');
  await round(Buffer.concat([bind('y'), execute, sync]));
  t.equal(a.messages.filter((m) => m.type === 'D').at(-1)?.body.toString('utf8', 6), '2', 'y still runs');
  // The same inside a failed transaction: PostgreSQL refuses every command there with 25P02.
  await round(Buffer.concat([parse('w', 'select 3'), sync])); // closes y on the server
  await round(simpleQuery('begin'));
  await round(simpleQuery('select 1/0'));
  const errors = a.count('E');
  await round(simpleQuery('deallocate y'));
  t.equal(a.count('E'), errors + 1, 'one error');
  t.match(lastError(), /C25P02/, 'current transaction is aborted');
  t.equal(a.messages.at(-1)?.body.toString('latin1'), 'E', 'and the ReadyForQuery of a failed transaction');
  await round(simpleQuery('rollback'));
  a.socket.end(frontend('X'));
  await assertNoLeaks(t, p);
});
