// Checking clients for load tests (restart, soak): node-postgres clients in a
// loop, each unit of work checking its own answer. A unit that fails with an
// error is "lost" (the client reconnects and goes on); a unit that returns
// something other than what it asked for is "wrong" and never acceptable.
import net from 'node:net';
import pg from 'pg';
import { sleep } from './proxy.js';

/** A wrong answer: the proxy returned rows that are not this client's. */
export class WrongAnswer extends Error {}

export interface Tally {
  /** units of work (a query, or a whole transaction) answered correctly */
  ok: number;
  /** units that ended in an error (the client reconnected) */
  lost: number;
  /** units answered with the wrong rows */
  wrong: number;
  connects: number;
  connectFailures: number;
  /** cancels sent whose query ended in 57014 */
  cancelled: number;
  /**
   * cancels that did not take: the query ran to its correct answer (a
   * cancel that reaches a backend before it reads the query is ignored by
   * PostgreSQL, so this is reported, not a failure)
   */
  cancelMissed: number;
  /** every error clients saw, by SQLSTATE (or by the driver's own words when there is none) */
  errors: Record<string, number>;
  /** the first error of each kind, with the worker and op it happened in */
  examples: Record<string, string>;
  firstWrong: string | null;
  firstError: string | null;
}

export function newTally(): Tally {
  return { ok: 0, lost: 0, wrong: 0, connects: 0, connectFailures: 0, cancelled: 0, cancelMissed: 0, errors: {}, examples: {}, firstWrong: null, firstError: null };
}

/** SQLSTATE of a server error, else a short name of a driver or socket error. */
export function errorKey(err: unknown): string {
  const e = err as { code?: unknown; message?: string };
  if (typeof e?.code === 'string' && /^[0-9A-Z]{5}$/.test(e.code)) return e.code;
  if (typeof e?.code === 'string') return e.code; // ECONNRESET, EPIPE…
  const m = e?.message ?? String(err);
  if (/terminated unexpectedly/i.test(m)) return 'conn-terminated';
  if (/not queryable|connection error/i.test(m)) return 'conn-broken';
  if (/Connection terminated/i.test(m)) return 'conn-ended';
  return m.slice(0, 60);
}

export function countError(tally: Tally, err: unknown, where: string): void {
  const k = errorKey(err);
  tally.errors[k] = (tally.errors[k] ?? 0) + 1;
  tally.examples[k] ??= `${where} at ${new Date().toISOString()}: ${(err as Error)?.message ?? String(err)}`;
  tally.firstError ??= `${where}: ${(err as Error)?.message ?? String(err)}`;
}

export function mergeErrors(into: Record<string, number>, from: Record<string, number>): void {
  for (const [k, v] of Object.entries(from)) into[k] = (into[k] ?? 0) + v;
}

/** Random choices of a worker (Math.random: concurrent runs are not repeatable anyway). */
export const rnd = {
  int: (n: number): number => Math.floor(Math.random() * n),
  pick: <T>(xs: readonly T[]): T => xs[Math.floor(Math.random() * xs.length)],
  chance: (p: number): boolean => Math.random() < p,
};

export interface OpContext {
  /** worker number */
  id: number;
  tally: Tally;
  /** the port of the proxy, for CancelRequests */
  port: number;
}

/** One unit of work: resolves when answered correctly, throws WrongAnswer or the driver's error. */
export type Op = (c: pg.Client, ctx: OpContext) => Promise<void>;

function expectRow(what: string, rows: Record<string, unknown>[], want: Record<string, unknown>): void {
  const got = rows.length === 1 ? rows[0] : undefined;
  const same = got !== undefined && Object.keys(want).every((k) => got[k] === want[k]) && Object.keys(got).length === Object.keys(want).length;
  if (!same) throw new WrongAnswer(`${what}: wanted ${JSON.stringify(want)}, got ${JSON.stringify(rows)}`);
}

function ask(ctx: OpContext): { n: number; tag: string } {
  return { n: rnd.int(2_000_000_000), tag: `w${ctx.id}-${rnd.int(1e9)}` };
}

type SessionTagged = pg.Client & { pgbudgetSessionTag?: string };

/** What this client set pgbudget.session to with the session op ('' before it did). */
function sessionTag(c: pg.Client): string {
  return (c as SessionTagged).pgbudgetSessionTag ?? '';
}

/** The SQLSTATE of a query that was cancelled. */
const CANCELLED = '57014';

/**
 * A CancelRequest for this client's backend key, sent on a connection of
 * its own, resolving once the other end has closed that connection: as
 * libpq's PQcancel does (it writes the request, does not half-close, and
 * waits for EOF), so that the cancel cannot hit the query sent next.
 */
export function sendCancel(port: number, c: pg.Client): Promise<void> {
  const { processID, secretKey } = c as unknown as { processID: number; secretKey: number };
  const b = Buffer.alloc(16);
  b.writeInt32BE(16, 0);
  b.writeInt32BE(80877102, 4);
  b.writeInt32BE(processID | 0, 8);
  b.writeInt32BE(secretKey | 0, 12);
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port }, () => s.write(b));
    s.setTimeout(10_000, () => s.destroy());
    s.on('error', () => resolve());
    s.on('close', () => resolve());
  });
}

export const ops = {
  /** extended protocol, unnamed statement */
  extended: (async (c, ctx) => {
    const { n, tag } = ask(ctx);
    const r = await c.query('select $1::int as n, $2::text as tag', [n, tag]);
    expectRow('extended', r.rows, { n, tag });
  }) as Op,
  /** extended protocol, a named statement (prepared once per client, reused on whatever server connection) */
  named: (async (c, ctx) => {
    const { n, tag } = ask(ctx);
    const r = await c.query({ name: 'pgbudget_check', text: 'select $1::int as n, $2::text as tag', values: [n, tag] });
    expectRow('named', r.rows, { n, tag });
  }) as Op,
  /** simple protocol */
  simple: (async (c, ctx) => {
    const { n, tag } = ask(ctx);
    const r = await c.query(`select ${n}::int as n, '${tag}'::text as tag`);
    expectRow('simple', r.rows, { n, tag });
  }) as Op,
  /**
   * A transaction that must start clean (no transaction-local setting left
   * by anybody, no session setting but this client's own) and see its own
   * setting and answer throughout.
   */
  transaction: (async (c, ctx) => {
    const { n, tag } = ask(ctx);
    await c.query('begin');
    const before = await c.query(
      "select coalesce(current_setting('pgbudget.tag', true), '') as before, coalesce(current_setting('pgbudget.session', true), '') as session",
    );
    expectRow('transaction start', before.rows, { before: '', session: sessionTag(c) });
    await c.query("select set_config('pgbudget.tag', $1, true)", [tag]);
    const r = await c.query("select $1::int as n, current_setting('pgbudget.tag') as tag", [n]);
    expectRow('transaction', r.rows, { n, tag });
    await c.query('commit');
  }) as Op,
  /** a query of 0.3 to 1.5 s that holds its server connection the while */
  long: (async (c, ctx) => {
    const { n, tag } = ask(ctx);
    const secs = (300 + rnd.int(1200)) / 1000;
    const r = await c.query('select $1::int as n, $2::text as tag from pg_sleep($3)', [n, tag, secs]);
    expectRow('long', r.rows, { n, tag });
  }) as Op,
  /**
   * pg_sleep(5) cancelled after 50 to 400 ms: must end in 57014 (never in
   * rows), and the client goes on with a correct answer.
   */
  cancel: (async (c, ctx) => {
    const { n, tag } = ask(ctx);
    const q = c.query('select $1::int as n, $2::text as tag from pg_sleep(5)', [n, tag]);
    q.catch(() => undefined);
    await sleep(50 + rnd.int(350));
    await sendCancel(ctx.port, c);
    let rows: Record<string, unknown>[] | null = null;
    try {
      rows = (await q).rows;
    } catch (err) {
      if ((err as { code?: string }).code !== CANCELLED) throw err;
      ctx.tally.cancelled++;
    }
    if (rows) {
      expectRow('cancelled query', rows, { n, tag });
      ctx.tally.cancelMissed++;
    }
    const after = ask(ctx);
    const r = await c.query('select $1::int as n, $2::text as tag', [after.n, after.tag]).catch((err: Error & { step?: string }) => {
      err.step = `the query after a cancel that ${rows ? 'missed' : 'took'}`;
      throw err;
    });
    expectRow('after cancel', r.rows, after);
  }) as Op,
  /**
   * Session mode: a session setting holds across this client's queries and
   * no new session sees another's (it must have been reset).
   */
  session: (async (c, ctx) => {
    const { n, tag } = ask(ctx);
    const r = await c.query("select $1::int as n, coalesce(current_setting('pgbudget.session', true), '') as tag", [n]);
    expectRow('session', r.rows, { n, tag: sessionTag(c) });
    await c.query("select set_config('pgbudget.session', $1, false)", [tag]);
    (c as SessionTagged).pgbudgetSessionTag = tag;
  }) as Op,
} satisfies Record<string, Op>;

export interface WorkerSpec {
  url: string;
  /** ops drawn at random per unit, repeated to weigh them */
  ops: Op[];
}

export interface CheckedLoad {
  tally: Tally;
  /** Ends the loops; `hung` names the workers still in a unit after graceMs. */
  stop(opts?: { graceMs?: number }): Promise<{ tally: Tally; hung: string[] }>;
}

/**
 * One loop per worker: connect, run random ops, reconnect after any error.
 * `onOk(id, at)` hears of each good unit. stop() lets the units in flight
 * finish (up to graceMs); a worker still stuck after that is reported hung
 * (with the op it was in) and its socket destroyed.
 */
export function checkedLoad(
  workers: WorkerSpec[],
  opts: { port: number; pauseMs?: number; onOk?: (id: number, at: number) => void; tally?: Tally },
): CheckedLoad {
  const tally = opts.tally ?? newTally();
  let running = true;
  const current: { client: pg.Client | null; op: string; since: number }[] = workers.map(() => ({ client: null, op: 'idle', since: 0 }));
  const loops = workers.map(async (spec, id) => {
    const ctx: OpContext = { id, tally, port: opts.port };
    const me = current[id];
    while (running) {
      if (!me.client) {
        const c = new pg.Client({ connectionString: spec.url });
        c.on('error', () => undefined); // surfaces as the rejection of the query in flight
        me.op = 'connect';
        me.since = Date.now();
        me.client = c;
        try {
          await c.connect();
          tally.connects++;
        } catch (err) {
          tally.connectFailures++;
          countError(tally, err, `worker ${id} connect`);
          me.client = null;
          void c.end().catch(() => undefined);
          await sleep(50);
          continue;
        }
      }
      const c = me.client;
      const op = rnd.pick(spec.ops);
      me.op = Object.entries(ops).find(([, f]) => f === op)?.[0] ?? 'op';
      me.since = Date.now();
      try {
        await op(c, ctx);
        tally.ok++;
        opts.onOk?.(id, Date.now());
      } catch (err) {
        if (err instanceof WrongAnswer) {
          tally.wrong++;
          tally.firstWrong ??= `worker ${id}: ${err.message}`;
        } else {
          tally.lost++;
          const step = (err as { step?: string }).step;
          countError(tally, err, `worker ${id} ${me.op}${step ? ` (${step})` : ''}`);
        }
        me.client = null;
        void c.end().catch(() => undefined);
      }
      me.op = 'idle';
      if (opts.pauseMs) await sleep(opts.pauseMs);
    }
    if (me.client) await me.client.end().catch(() => undefined);
    me.client = null;
  });
  return {
    tally,
    async stop({ graceMs = 15_000 } = {}) {
      running = false;
      const all = Promise.all(loops);
      let timer: NodeJS.Timeout | undefined;
      const finished = await Promise.race([all.then(() => true), new Promise<boolean>((r) => (timer = setTimeout(() => r(false), graceMs)))]);
      clearTimeout(timer);
      const hung: string[] = [];
      if (!finished) {
        const now = Date.now();
        current.forEach((w, id) => {
          if (w.op === 'idle') return;
          hung.push(`worker ${id} stuck in ${w.op} for ${now - w.since} ms`);
          (w.client as unknown as { connection?: { stream?: net.Socket } } | null)?.connection?.stream?.destroy();
        });
        await all;
      }
      return { tally, hung };
    },
  };
}
