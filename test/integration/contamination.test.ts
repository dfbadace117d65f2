// No cross-client contamination, proved at volume: 50 clients (node-postgres
// and postgres.js) share a budget of 8 server connections in transaction
// mode for 20,000 transactions, each client a seeded random mix of SET LOCAL,
// temp tables, named statements whose names collide across clients with
// other texts and result shapes, cancels (some racing the statement's end),
// and failing statements followed by ROLLBACK. Every row a client receives
// carries its own id; a cancel never reaches another client's statement.
// Rerun a failure with PGBUDGET_CONTAMINATION_SEED=<the seed printed>.
import net from 'node:net';
import t from 'tap';
import pg from 'pg';
import postgres from 'postgres';
import { serialize } from 'pg-protocol/dist/serializer';
import { withCluster } from '../helpers/cluster.js';
import { assertNoLeaks, sleep, startProxy } from '../helpers/proxy.js';

const CLIENTS = 50;
const POSTGRES_JS_CLIENTS = 10; // the last ten ids; the others are node-postgres
const TRANSACTIONS_PER_CLIENT = 400; // 50 × 400 = 20,000
const BUDGET = 8;
const CAP = 10;

const seed = Number(process.env.PGBUDGET_CONTAMINATION_SEED ?? Math.floor(Math.random() * 2 ** 31)) >>> 0;

/** mulberry32: a small seeded PRNG, one stream per client. */
function prng(s: number): () => number {
  let a = s >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 2 ** 32;
  };
}

const cluster = await withCluster(t, { maxConnections: 20, users: ['app'] });
// One row per client id: inserting one's own id again is a unique violation.
await cluster.query('create table taken(k int primary key)');
await cluster.query('insert into taken select generate_series(0, $1::int - 1)', [CLIENTS]);
const proxy = await startProxy(t, cluster, {
  serverApplicationName: 'client',
  upstream: { maxConnections: CAP },
  // Fewer than the distinct statement texts in play: evictions and re-prepares all along.
  maxPreparedStatements: 6,
  services: [{ name: 'app', match: { user: 'app' }, budget: BUDGET, poolMode: 'transaction', onSessionState: 'error', queue: { timeoutMs: 60_000 } }],
});

/** A row that belongs to another client, or a setting that leaked: the failure this file hunts. */
class Contamination extends Error {}

interface PgError {
  code?: string;
  message?: string;
}

interface Tally {
  transactions: number;
  statements: number;
  kinds: Record<string, number>;
  cancels: number; // a pg_sleep cancelled on purpose
  racyCancels: number; // a cancel sent while a short statement may be ending
  racyHits: number; // ... that did cancel it
  lateOwnCancels: number; // a racy cancel that missed, then hit the same client's next statement
  errorsInjected: number;
}

const tally: Tally = { transactions: 0, statements: 0, kinds: {}, cancels: 0, racyCancels: 0, racyHits: 0, lateOwnCancels: 0, errorsInjected: 0 };
const failures: string[] = [];
/** What each client is doing, for the report of a stall. */
const current = new Map<number, { kind: string; i: number; since: number }>();
const fail = (id: number, what: string) => failures.push(`client ${id} (${id >= CLIENTS - POSTGRES_JS_CLIENTS ? 'postgres.js' : 'node-postgres'}): ${what}`);

function check(ok: boolean, what: () => string): void {
  if (!ok) throw new Contamination(what());
}

/** The promise must fail with `code`; anything else is thrown on. */
async function expectError(p: Promise<unknown>, code: string): Promise<void> {
  let result: unknown;
  try {
    result = await p;
  } catch (err) {
    if ((err as PgError).code === code) return;
    throw err;
  }
  const rows = (result as { rows?: unknown } | null)?.rows ?? result;
  throw new Error(`expected ${code}, got a result: ${JSON.stringify(rows)}`);
}

/** A CancelRequest with the BackendKeyData the proxy gave a client (node-postgres has no cancel of its own). */
function sendCancel(processID: number, secretKey: number): Promise<void> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port: proxy.port }, () => s.end(serialize.cancel(processID, secretKey)));
    s.on('error', () => resolve());
    s.on('close', () => resolve());
  });
}

// Direct connections (not through the proxy) that hold the advisory lock a
// racing statement waits on, shared by the clients.
const LOCK_BASE = 7_000_000;
const LOCK_HOLDERS = 3;
const holders: pg.Client[] = [];
const holderWaiters: ((h: pg.Client) => void)[] = [];

async function withLockHolder<T>(fn: (h: pg.Client) => Promise<T>): Promise<T> {
  const h = holders.pop() ?? (await new Promise<pg.Client>((r) => holderWaiters.push(r)));
  try {
    return await fn(h);
  } finally {
    await h.query('rollback').catch(() => {}); // after a failure, the lock is not kept
    const next = holderWaiters.shift();
    if (next) next(h);
    else holders.push(h);
  }
}

/**
 * Until a statement through the proxy is blocked on the lock (it holds a
 * server connection now), or has ended some other way.
 */
async function waitForLockWaiter(h: pg.Client, key: number, ended: () => boolean): Promise<void> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const { rows } = await h.query("select count(*)::int as n from pg_locks where locktype = 'advisory' and objid = $1 and not granted", [key]);
    if (rows[0].n > 0 || ended()) return;
    if (Date.now() > deadline) throw new Error(`nobody waited on advisory lock ${key}`);
    await sleep(1);
  }
}

/** What an operation returns when a cancel it sent did not stop its statement and may still land. */
const CANCEL_MAY_LINGER = 'cancel may linger';
type Ops = Record<Kind, () => Promise<void | typeof CANCEL_MAY_LINGER>>;

/**
 * One client's run: TRANSACTIONS_PER_CLIENT operations drawn from `mix`. A
 * failure is recorded and the client goes on after `recover` (it stops if
 * that fails). A 57014 is allowed only in the operation right after one whose
 * cancel crossed its statement's end without stopping it: that is the
 * client's own cancel arriving late (as with a direct connection, it may hit
 * the next statement on that server connection). Any other 57014 is a cancel
 * that reached a statement nobody cancelled.
 */
async function drive(id: number, rng: () => number, mix: [Kind, number][], ops: Ops, recover: () => Promise<void>): Promise<void> {
  let cancelMayLinger = false;
  try {
    for (let i = 0; i < TRANSACTIONS_PER_CLIENT; i++) {
      const kind = pick(rng, mix);
      current.set(id, { kind, i, since: Date.now() });
      const ownLateCancelPossible = cancelMayLinger;
      cancelMayLinger = false;
      try {
        cancelMayLinger = (await ops[kind]()) === CANCEL_MAY_LINGER;
        tally.transactions++;
        tally.kinds[kind] = (tally.kinds[kind] ?? 0) + 1;
      } catch (err) {
        const e = err as PgError;
        if (err instanceof Contamination) fail(id, `WRONG ROW in ${kind} #${i}: ${e.message}`);
        else if (e.code === '57014' && ownLateCancelPossible) {
          tally.lateOwnCancels++;
          tally.transactions++; // ended by its own client's cancel
        } else if (e.code === '57014') fail(id, `57014 in ${kind} #${i}, a statement nobody cancelled: ${e.message}`);
        else fail(id, `unexpected error in ${kind} #${i}: ${e.code ?? ''} ${e.message}`);
        try {
          await recover();
        } catch (recoverErr) {
          fail(id, `gave up: ${(recoverErr as Error).message}`);
          return;
        }
      }
      if (rng() < 0.05) await sleep(rng() * 3);
    }
  } finally {
    current.delete(id);
  }
}

type Kind = 'plain' | 'setLocal' | 'tempTable' | 'prepared' | 'cancel' | 'racyCancel' | 'divisionByZero' | 'uniqueViolation';

function pick(rng: () => number, weights: [Kind, number][]): Kind {
  let r = rng() * weights.reduce((s, [, w]) => s + w, 0);
  for (const [kind, w] of weights) if ((r -= w) < 0) return kind;
  return weights[0][0];
}

const PG_MIX: [Kind, number][] = [
  ['plain', 25],
  ['setLocal', 20],
  ['tempTable', 12],
  ['prepared', 25],
  ['cancel', 1.5],
  ['racyCancel', 2.5],
  ['divisionByZero', 7],
  ['uniqueViolation', 7],
];
const PJS_MIX: [Kind, number][] = PG_MIX.filter(([k]) => k !== 'racyCancel');

const owner = (id: number) => `client-${id}`;
const ownerPattern = /^client-\d+$/;

// ---------------------------------------------------------------------------
// node-postgres: named statements whose names every client shares, with
// other texts and result shapes in each of three groups.

interface Named {
  name: string;
  text: string;
  values(id: number): unknown[];
  ok(rows: Record<string, unknown>[], id: number): boolean;
}

const one = (rows: Record<string, unknown>[], f: (r: Record<string, unknown>) => boolean) => rows.length === 1 && f(rows[0]);

const SHARED: Named = { name: 'q0', text: 'select $1::int as id', values: (id) => [id], ok: (rows, id) => one(rows, (r) => r.id === id) };
const GROUPS: Named[][] = [
  [
    { name: 'q1', text: "select $1::int as id, 'g0' as grp", values: (id) => [id], ok: (rows, id) => one(rows, (r) => r.id === id && r.grp === 'g0') },
    { name: 'q2', text: 'select $1::int as id, $2::text as tag', values: (id) => [id, `t${id}`], ok: (rows, id) => one(rows, (r) => r.id === id && r.tag === `t${id}`) },
    { name: 'q3', text: 'select id from (values ($1::int)) v(id)', values: (id) => [id], ok: (rows, id) => one(rows, (r) => r.id === id) },
  ],
  [
    { name: 'q1', text: 'select 1 as grp, $1::int as id, $1::int * 2 as twice', values: (id) => [id], ok: (rows, id) => one(rows, (r) => r.grp === 1 && r.id === id && r.twice === 2 * id) },
    { name: 'q2', text: 'select $2::text as tag, $1::bigint as id', values: (id) => [id, `t${id}`], ok: (rows, id) => one(rows, (r) => r.id === String(id) && r.tag === `t${id}`) },
    {
      name: 'q3',
      text: 'select $1::int as id union all select $1::int + 1000 order by 1',
      values: (id) => [id],
      ok: (rows, id) => rows.length === 2 && rows[0].id === id && rows[1].id === id + 1000,
    },
  ],
  [
    { name: 'q1', text: 'select $1::text as id', values: (id) => [String(id)], ok: (rows, id) => one(rows, (r) => r.id === String(id)) },
    {
      name: 'q2',
      text: "select $1::int as id, current_setting('pgb.owner', true) as owner",
      values: (id) => [id],
      ok: (rows, id) => one(rows, (r) => r.id === id && !r.owner),
    },
    { name: 'q3', text: 'select array[$1::int, $1::int] as id', values: (id) => [id], ok: (rows, id) => one(rows, (r) => JSON.stringify(r.id) === JSON.stringify([id, id])) },
  ],
];

async function pgClient(id: number, rng: () => number): Promise<void> {
  const c = new pg.Client({ connectionString: proxy.url('app') });
  c.on('notice', () => {}); // ROLLBACK outside a transaction after a failure
  c.on('error', (err) => fail(id, `connection error: ${err.message}`));
  await c.connect();
  const keys = c as unknown as { processID: number; secretKey: number };
  const q = async (text: string | Named, values?: unknown[]) => {
    tally.statements++;
    const r = typeof text === 'string' ? await c.query(text, values) : await c.query({ name: text.name, text: text.text, values: values ?? text.values(id) });
    return r.rows as Record<string, unknown>[];
  };
  const named = async (s: Named) => {
    const rows = await q(s);
    check(s.ok(rows, id), () => `${s.name} (${s.text}) returned ${JSON.stringify(rows)}`);
  };
  const plainCheck = async () => {
    const rows = await q('select $1::int as id', [id]);
    check(one(rows, (r) => r.id === id), () => `select $1 returned ${JSON.stringify(rows)}`);
  };
  const group = GROUPS[id % GROUPS.length];

  const ops: Ops = {
    async plain() {
      if (rng() < 0.7) return plainCheck();
      // A statement that runs a few ms: what a cancel meant for another client would hit.
      const rows = await q('select $1::int as id, pg_sleep(0.004) is null as slept', [id]);
      check(one(rows, (r) => r.id === id), () => `sleeping select $1 returned ${JSON.stringify(rows)}`);
    },
    async setLocal() {
      await q('begin');
      const [before] = await q("select current_setting('pgb.owner', true) as v, current_setting('application_name') as app");
      check(!before.v && !ownerPattern.test(String(before.app)), () => `a fresh transaction already had ${JSON.stringify(before)}`);
      const app = rng() < 0.3;
      await q(`set local pgb.owner = '${owner(id)}'`);
      if (app) await q(`set local application_name = '${owner(id)}'`);
      if (rng() < 0.5) await sleep(rng() * 2);
      const rows =
        rng() < 0.5
          ? await q("select current_setting('pgb.owner') as v, current_setting('application_name') as app, $1::int as id", [id])
          : await q({ name: 'owner', text: "select current_setting('pgb.owner') as v, current_setting('application_name') as app, $1::int as id", values: () => [id], ok: () => true });
      check(
        one(rows, (r) => r.v === owner(id) && r.id === id && (!app || r.app === owner(id))),
        () => `SET LOCAL read back ${JSON.stringify(rows)}`,
      );
      await q(rng() < 0.8 ? 'commit' : 'rollback');
    },
    async tempTable() {
      await q('begin');
      await q('create temp table own_t (id int) on commit drop');
      const n = 1 + Math.floor(rng() * 3);
      for (let i = 0; i < n; i++) await q({ name: 'tmp_ins', text: 'insert into own_t values ($1)', values: () => [id], ok: () => true });
      if (rng() < 0.3) await sleep(rng() * 2);
      const rows = await q({ name: 'tmp_sel', text: 'select id from own_t', values: () => [], ok: () => true });
      check(rows.length === n && rows.every((r) => r.id === id), () => `temp table held ${JSON.stringify(rows)}, wanted ${n} × ${id}`);
      await q('commit');
    },
    async prepared() {
      const inTx = rng() < 0.3;
      if (inTx) await q('begin');
      const n = 1 + Math.floor(rng() * 3);
      for (let i = 0; i < n; i++) await named(rng() < 0.25 ? SHARED : group[Math.floor(rng() * group.length)]);
      if (inTx) await q('commit');
    },
    async cancel() {
      const inTx = rng() < 0.4;
      if (inTx) {
        await q('begin');
        await plainCheck();
      }
      tally.statements++;
      const cancelled = expectError(c.query('select pg_sleep(10)'), '57014');
      await sleep(2 + rng() * 20);
      await sendCancel(keys.processID, keys.secretKey);
      await cancelled;
      tally.cancels++;
      if (inTx) {
        await expectError(q('select 1'), '25P02');
        await q('rollback');
      }
      await plainCheck();
    },
    async racyCancel() {
      // A cancel sent about when a statement ends: either outcome is fine for
      // this statement; no other client may ever see a 57014. Three timings:
      // while it may still run, right after its result (its server connection
      // may already serve another client), and at its very end: the statement
      // waits on an advisory lock that a direct connection releases just
      // before or after the cancel goes out, so the server connection is
      // handed to a waiting client while the cancel is on its way.
      const timing = rng();
      const atEnd = timing >= 0.5;
      const text = atEnd ? 'select $1::int as id, pg_advisory_xact_lock($2::bigint) is null as s' : 'select $1::int as id, pg_sleep($2::float8) as s';
      const lockKey = LOCK_BASE + id;
      const race = async (holder?: pg.Client): Promise<boolean> => {
        if (holder) await holder.query(`begin; select pg_advisory_xact_lock(${lockKey})`);
        tally.statements++;
        let ended = false;
        const running = c.query(text, [id, atEnd ? lockKey : rng() * 0.003]).then(
          (r) => ((ended = true), r.rows as Record<string, unknown>[]),
          (err: PgError) => {
            ended = true;
            if (err.code !== '57014') throw err;
            tally.racyHits++;
            return null;
          },
        );
        if (holder) {
          await waitForLockWaiter(holder, lockKey, () => ended);
          const release = holder.query('commit');
          if (rng() < 0.5) await new Promise<void>((r) => setImmediate(r));
          tally.racyCancels++;
          await Promise.all([sendCancel(keys.processID, keys.secretKey), release]);
        } else {
          if (timing < 0.25) await running;
          else await sleep(rng() * 25);
          tally.racyCancels++;
          await sendCancel(keys.processID, keys.secretKey);
        }
          const rows = await running;
        if (rows) check(one(rows, (row) => row.id === id), () => `racy statement returned ${JSON.stringify(rows)}`);
        return rows !== null;
      };
      const missed = await (atEnd ? withLockHolder(race) : race());
      await sleep(20);
      // A cancel that stopped its statement is spent; one that missed may still land.
      if (missed) return CANCEL_MAY_LINGER;
    },
    async divisionByZero() {
      tally.errorsInjected++;
      const inTx = rng() < 0.8;
      if (inTx) {
        await q('begin');
        await plainCheck();
      }
      const boom = rng() < 0.5 ? q({ name: 'boom', text: 'select $1::int / $2::int as q', values: () => [id, 0], ok: () => true }) : q('select 1/0');
      await expectError(boom, '22012');
      if (inTx) {
        if (rng() < 0.5) await expectError(q('select $1::int as id', [id]), '25P02');
        await q('rollback');
      }
    },
    async uniqueViolation() {
      tally.errorsInjected++;
      await q('begin');
      await named(SHARED);
      await expectError(q('insert into taken values ($1)', [id]), '23505');
      await q('rollback');
    },
  };

  try {
    await drive(id, rng, PG_MIX, ops, async () => {
      await c.query('rollback'); // a failure may leave a transaction open
    });
  } finally {
    await c.end().catch(() => {});
  }
}

// ---------------------------------------------------------------------------
// postgres.js: its own random statement names, pipelining, its own cancel.

async function postgresJsClient(id: number, rng: () => number): Promise<void> {
  const sql = postgres(proxy.url('app'), { max: 1, onnotice: () => {} });
  const count = <T>(p: T) => (tally.statements++, p);
  const plainCheck = async (s: postgres.Sql | postgres.TransactionSql = sql) => {
    const rows = await count(s`select ${id}::int as id`);
    check(one(rows, (r) => r.id === id), () => `select ${id} returned ${JSON.stringify(rows)}`);
  };

  const ops: Ops = {
    async plain() {
      if (rng() < 0.3) {
        // Several statements pipelined on the one connection.
        const all = await Promise.all([1, 2, 3].map((k) => count(sql`select ${id}::int as id, ${k}::int as k`)));
        check(
          all.every((rows, i) => one(rows, (r) => r.id === id && r.k === i + 1)),
          () => `pipelined statements returned ${JSON.stringify(all)}`,
        );
      } else await plainCheck();
    },
    async setLocal() {
      await sql.begin(async (tx) => {
        const [before] = await count(tx`select current_setting('pgb.owner', true) as v, current_setting('application_name') as app`);
        check(!before.v && !ownerPattern.test(String(before.app)), () => `a fresh transaction already had ${JSON.stringify(before)}`);
        await count(tx.unsafe(`set local pgb.owner = '${owner(id)}'`));
        if (rng() < 0.5) await sleep(rng() * 2);
        const rows = await count(tx`select current_setting('pgb.owner') as v, ${id}::int as id`);
        check(one(rows, (r) => r.v === owner(id) && r.id === id), () => `SET LOCAL read back ${JSON.stringify(rows)}`);
      });
    },
    async tempTable() {
      await sql.begin(async (tx) => {
        await count(tx.unsafe('create temp table own_t (id int) on commit drop'));
        const n = 1 + Math.floor(rng() * 3);
        for (let i = 0; i < n; i++) await count(tx`insert into own_t values (${id})`);
        const rows = await count(tx`select id from own_t`);
        check(rows.length === n && rows.every((r) => r.id === id), () => `temp table held ${JSON.stringify(rows)}, wanted ${n} × ${id}`);
      });
    },
    async prepared() {
      // Shapes that differ by group; postgres.js prepares every one of them.
      const rows =
        id % 2 === 0
          ? await count(sql`select ${id}::int as id, ${'pj'}::text as grp`)
          : await count(sql`select ${'pj'}::text as grp, ${id}::bigint as id, now() as at`);
      check(one(rows, (r) => String(r.id) === String(id) && r.grp === 'pj'), () => `prepared returned ${JSON.stringify(rows)}`);
    },
    async cancel() {
      const sleeping = count(sql`select pg_sleep(10)`);
      const settled = sleeping.then(
        () => null,
        (err: PgError) => err,
      );
      await sleep(2 + rng() * 20);
      await sleeping.cancel();
      const err = await settled;
      if (err?.code !== '57014') throw err ?? new Error('pg_sleep was not cancelled');
      tally.cancels++;
      await plainCheck();
    },
    async racyCancel() {
      throw new Error('not in the postgres.js mix');
    },
    async divisionByZero() {
      tally.errorsInjected++;
      await expectError(
        sql.begin(async (tx) => {
          await plainCheck(tx);
          await count(tx`select ${id}::int / 0 as q`);
        }),
        '22012',
      );
    },
    async uniqueViolation() {
      tally.errorsInjected++;
      await expectError(
        sql.begin(async (tx) => {
          await plainCheck(tx);
          await count(tx`insert into taken values (${id})`);
        }),
        '23505',
      );
    },
  };

  try {
    // postgres.js 3.4.9 never serves its connection again when the first query
    // is cancelled while the connection is still starting (the same against
    // PostgreSQL directly): connect before anything can be cancelled.
    await sql`select 1`;
    // sql.begin rolls back by itself.
    await drive(id, rng, PJS_MIX, ops, async () => {});
  } finally {
    await sql.end({ timeout: 5 }).catch(() => {});
  }
}

t.test(`${CLIENTS} clients, ${CLIENTS * TRANSACTIONS_PER_CLIENT} transactions, budget ${BUDGET}: every row is its own client's`, async (t) => {
  t.comment(`seed ${seed} (rerun with PGBUDGET_CONTAMINATION_SEED=${seed})`);
  let maxHeld = 0;
  let maxApp = 0;
  const watcher = setInterval(() => {
    const snap = proxy.proxy.snapshot();
    maxHeld = Math.max(maxHeld, snap.upstream.serverConnections);
    maxApp = Math.max(maxApp, snap.services.find((s) => s.name === 'app')?.serverConnections.total ?? 0);
  }, 25);
  for (let i = 0; i < LOCK_HOLDERS; i++) {
    const h = new pg.Client({ connectionString: cluster.url() });
    h.on('notice', () => {});
    await h.connect();
    holders.push(h);
  }
  t.teardown(() => Promise.all(holders.map((h) => h.end())));
  // A stall is reported with what each stuck client was doing and what the
  // proxy and the server saw, rather than left to tap's timeout.
  let stallReported = false;
  const stallWatch = setInterval(() => {
    const stuck = [...current.entries()].filter(([, c]) => Date.now() - c.since > 15_000);
    if (stuck.length === 0 || stallReported) return;
    stallReported = true;
    const who = stuck.map(([id, c]) => `client ${id} in ${c.kind} #${c.i} for ${Date.now() - c.since} ms`).join('; ');
    failures.push(`STALL (seed ${seed}): ${who}; proxy ${JSON.stringify(proxy.proxy.snapshot().services)}`);
    void cluster
      .query("select pid, state, wait_event_type, wait_event, now() - query_start as running, query from pg_stat_activity where backend_type = 'client backend'")
      .then((rows) => t.comment(`STALL (seed ${seed}): ${who}\nproxy: ${JSON.stringify(proxy.proxy.snapshot())}\nserver: ${JSON.stringify(rows, null, 1)}`));
  }, 1000);
  const started = Date.now();
  let deadline: NodeJS.Timeout | undefined;
  await Promise.race([
    Promise.all(
      Array.from({ length: CLIENTS }, (_, id) => {
        const rng = prng((seed + Math.imul(id + 1, 0x9e3779b9)) >>> 0);
        const run = id >= CLIENTS - POSTGRES_JS_CLIENTS ? postgresJsClient(id, rng) : pgClient(id, rng);
        return run.catch((err: Error) => fail(id, `client died: ${err.message}`));
      }),
    ),
    // Well inside tap's timeout, so that a stall still ends in this report.
    new Promise<void>((resolve) => {
      deadline = setTimeout(() => {
        failures.push(`not finished after 120 s: ${[...current.entries()].map(([id, c]) => `client ${id} in ${c.kind} #${c.i}`).join('; ')}`);
        resolve();
      }, 120_000);
    }),
  ]);
  clearTimeout(deadline);
  const wallMs = Date.now() - started;
  clearInterval(watcher);
  clearInterval(stallWatch);
  const app = proxy.proxy.snapshot().services.find((s) => s.name === 'app')!;
  t.comment(
    `seed ${seed}: ${tally.transactions} transactions (${tally.statements} statements) in ${(wallMs / 1000).toFixed(1)} s; ` +
      `kinds ${JSON.stringify(tally.kinds)}; cancels ${tally.cancels}, racy cancels ${tally.racyCancels} (${tally.racyHits} hit, ` +
      `${tally.lateOwnCancels} hit the same client's next statement); errors injected ${tally.errorsInjected}; ` +
      `proxy counted ${app.transactions} transactions, opened ${app.serversOpened} server connections; at most ${maxApp} held by the service, ${maxHeld} upstream`,
  );
  t.same(failures.slice(0, 20), [], `no wrong row, no stray cancel, no unexpected error (seed ${seed}; ${failures.length} failures)`);
  t.ok(tally.transactions >= 20_000, `at least 20,000 transactions (${tally.transactions})`);
  t.ok(tally.cancels > 0 && tally.errorsInjected > 0, 'cancels and errors were exercised');
  t.ok(maxApp <= BUDGET && maxHeld <= CAP, `never over the budget (${maxApp} ≤ ${BUDGET}) or the cap (${maxHeld} ≤ ${CAP})`);
  t.same(app.pins, {}, 'no client was pinned: every transaction shared the pool');
  t.ok(Object.values(app.rejections).every((n) => n === 0), `no client was turned away (${JSON.stringify(app.rejections)})`);
  await assertNoLeaks(t, proxy, 5000);
});
