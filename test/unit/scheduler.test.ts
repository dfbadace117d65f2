import t from 'tap';
import { Scheduler, type Action, type Waiter } from '../../src/budget/scheduler.js';
import { assigns, kinds, openAll, opens } from '../helpers/actions.js';

const K = 'app\0db';
const limits = (budget: number, maxWaiting = 100, timeoutMs = 1000) => ({ budget, maxWaiting, timeoutMs });

function make(cap: number, services: Record<string, number>, opts: { maxWaiting?: number; timeoutMs?: number } = {}) {
  const s = new Scheduler({ cap, idleTimeoutMs: 60_000, lifetimeMs: 3_600_000 });
  for (const [name, budget] of Object.entries(services)) s.setService(name, limits(budget, opts.maxWaiting, opts.timeoutMs));
  return s;
}


t.test('a request under budget opens a connection, then reuses it', async (t) => {
  const s = make(10, { a: 2 });
  const r1 = s.acquire('a', K, 0);
  t.same(kinds(r1.actions), ['open']);
  const a1 = openAll(s, r1.actions);
  t.same(assigns(a1).map((a) => a.waiter.id), [r1.waiter.id]);
  const connId = assigns(a1)[0].connId;
  t.same(kinds(s.release(connId, 1, true)), []);
  t.same(s.counts('a'), { service: 'a', budget: 2, held: 1, active: 0, idle: 1, opening: 0, closing: 0, waiting: 0 });
  const r2 = s.acquire('a', K, 2);
  t.same(r2.actions, [{ kind: 'assign', waiter: r2.waiter, connId, waitedMs: 0 }]);
});

t.test('the budget holds: the third client waits, in order', async (t) => {
  const s = make(10, { a: 2 });
  const r = [0, 1, 2, 3].map((i) => s.acquire('a', K, i));
  t.equal(opens(r.flatMap((x) => x.actions)).length, 2);
  t.equal(s.counts('a').held, 2);
  t.equal(s.counts('a').waiting, 4);
  const first = openAll(s, r.flatMap((x) => x.actions));
  t.same(assigns(first).map((a) => a.waiter.id), [r[0].waiter.id, r[1].waiter.id]);
  t.equal(s.counts('a').waiting, 2);
  const handoff = s.release(assigns(first)[0].connId, 10, true);
  t.same(assigns(handoff).map((a) => [a.waiter.id, a.waitedMs]), [[r[2].waiter.id, 8]]);
});

t.test('the cap holds across services', async (t) => {
  const s = make(3, { a: 3, b: 3 });
  const actions: Action[] = [];
  for (let i = 0; i < 5; i++) actions.push(...s.acquire('a', K, i).actions, ...s.acquire('b', K, i).actions);
  t.equal(opens(actions).length, 3);
  t.equal(s.totalHeld, 3);
});

t.test('queue full rejects at once with the facts', async (t) => {
  const s = make(10, { a: 1 }, { maxWaiting: 2 });
  s.acquire('a', K, 0);
  s.acquire('a', K, 0);
  const third = s.acquire('a', K, 0);
  const rej = third.actions.find((a) => a.kind === 'reject');
  t.match(rej, { kind: 'reject', reason: 'queue_full', facts: { service: 'a', budget: 1, held: 1, waiting: 2 } });
});

t.test('queue timeout rejects only the waiters past their timeout', async (t) => {
  const s = make(10, { a: 1 }, { timeoutMs: 100 });
  const r = [0, 50].map((now) => s.acquire('a', K, now));
  openAll(s, r[0].actions, 0); // the first is served; the second waits
  t.same(s.sweep(149).filter((a) => a.kind === 'reject'), []);
  const rej = s.sweep(150).filter((a) => a.kind === 'reject');
  t.match(rej, [{ kind: 'reject', reason: 'queue_timeout', waitedMs: 100, waiter: { id: r[1].waiter.id } }]);
  t.equal(s.counts('a').waiting, 0);
});

t.test('a waiter that leaves is removed at once and gets nothing', async (t) => {
  const s = make(10, { a: 1 });
  const r0 = s.acquire('a', K, 0);
  const c = assigns(openAll(s, r0.actions))[0].connId;
  const r1 = s.acquire('a', K, 1);
  const r2 = s.acquire('a', K, 2);
  s.cancel(r1.waiter, 3);
  t.equal(s.counts('a').waiting, 1);
  t.notOk(s.isWaiting(r1.waiter));
  const next = s.release(c, 4, true);
  t.same(assigns(next).map((a) => a.waiter.id), [r2.waiter.id]);
});

t.test('one service waiting never delays another', async (t) => {
  const s = make(10, { a: 1, b: 1 });
  const a0 = s.acquire('a', K, 0);
  openAll(s, a0.actions);
  for (let i = 0; i < 50; i++) s.acquire('a', K, i);
  const b0 = s.acquire('b', K, 0);
  t.equal(opens(b0.actions).length, 1, 'b opens its own connection although a has 50 waiters');
});

t.test('a connection that is not reusable is closed and its slot reopened for the next waiter', async (t) => {
  const s = make(1, { a: 1 });
  const r0 = s.acquire('a', K, 0);
  const c = assigns(openAll(s, r0.actions))[0].connId;
  s.acquire('a', K, 1);
  const rel = s.release(c, 2, false);
  t.same(rel, [{ kind: 'close', connId: c, reason: 'not_reusable' }]);
  t.equal(s.totalHeld, 1, 'a closing connection still counts against the cap');
  const after = s.closed(c, 3);
  t.same(kinds(after), ['open']);
  t.equal(s.totalHeld, 1);
});

t.test('opening pauses during upstream backoff and resumes on sweep', async (t) => {
  const s = make(5, { a: 5 });
  const r = s.acquire('a', K, 0);
  const o = opens(r.actions)[0];
  s.pauseOpening(500);
  t.same(s.closed(o.connId, 10), [], 'failed open: no retry during backoff');
  t.equal(s.counts('a').waiting, 1);
  t.same(kinds(s.sweep(499)), []);
  t.same(kinds(s.sweep(500)), ['open']);
});

t.test('failWaiters removes exactly the waiters of that key', async (t) => {
  const s = make(5, { a: 5 });
  const w1 = s.acquire('a', 'u1\0db', 0).waiter;
  s.acquire('a', 'u2\0db', 0);
  const w3 = s.acquire('a', 'u1\0db', 0).waiter;
  t.same(s.failWaiters('a', 'u1\0db').map((w: Waiter) => w.id), [w1.id, w3.id]);
  t.equal(s.counts('a').waiting, 1);
});

t.test('at budget, an idle connection of another key is evicted for a waiter', async (t) => {
  const s = make(5, { a: 1 });
  const r = s.acquire('a', 'u1\0db', 0);
  const c = assigns(openAll(s, r.actions))[0].connId;
  s.release(c, 1, true);
  const other = s.acquire('a', 'u2\0db', 2);
  t.same(other.actions, [{ kind: 'close', connId: c, reason: 'evicted' }]);
  t.same(kinds(s.closed(c, 3)), ['open']);
});

t.test('at the cap, idle connections of a calm service are evicted for a waiting one', async (t) => {
  const s = make(2, { a: 2, b: 2 });
  const r = [s.acquire('a', K, 0), s.acquire('a', K, 0)];
  const conns = assigns(openAll(s, r.flatMap((x) => x.actions))).map((a) => a.connId);
  for (const c of conns) s.release(c, 1, true);
  const b = s.acquire('b', K, 5);
  t.same(kinds(b.actions), ['close'], 'one idle connection of a is closed');
  t.same(kinds(s.closed(conns[1], 6)).filter((k) => k === 'open'), ['open']);
});

t.test('freed capacity is shared round-robin when budgets overcommit the cap', async (t) => {
  // Budgets 4 + 4 over a cap of 4: a holds everything, then b asks.
  const s = make(4, { a: 4, b: 4 });
  const ra = [0, 1, 2, 3].map(() => s.acquire('a', K, 0));
  const aConns = assigns(openAll(s, ra.flatMap((x) => x.actions))).map((a) => a.connId);
  for (let i = 0; i < 10; i++) s.acquire('a', K, 1);
  for (let i = 0; i < 10; i++) s.acquire('b', K, 1);
  t.equal(s.counts('b').held, 0);
  // a releases all four while both services still have waiters: b must get a fair share.
  let closes = 0;
  for (const c of aConns) {
    const acts = s.release(c, 2, true);
    closes += acts.filter((x) => x.kind === 'close').length;
  }
  t.ok(closes >= 2, `a yields at least half of its released slots (yielded ${closes})`);
  for (const c of aConns) s.closed(c, 3); // harmless for the ones not closing
  t.ok(s.counts('b').held >= 2, `b now holds ${s.counts('b').held}`);
  t.ok(s.totalHeld <= 4, 'the cap still holds');
});

t.test('a lowered budget closes idle connections and does not reuse released ones over budget', async (t) => {
  const s = make(10, { a: 3 });
  const r = [0, 1, 2].map(() => s.acquire('a', K, 0));
  const conns = assigns(openAll(s, r.flatMap((x) => x.actions))).map((a) => a.connId);
  s.release(conns[0], 1, true);
  s.setService('a', limits(1));
  const swept = s.sweep(2);
  t.same(swept, [{ kind: 'close', connId: conns[0], reason: 'over_budget' }]);
  t.same(s.release(conns[1], 3, true), [{ kind: 'close', connId: conns[1], reason: 'over_budget' }]);
  t.same(s.release(conns[2], 3, true), [], 'the last one is within the new budget and stays');
});

t.test('idle timeout and lifetime close idle connections', async (t) => {
  const s = new Scheduler({ cap: 5, idleTimeoutMs: 100, lifetimeMs: 1000 });
  s.setService('a', limits(5));
  const r = s.acquire('a', K, 0);
  const c = assigns(openAll(s, r.actions))[0].connId;
  s.release(c, 10, true);
  t.same(s.sweep(109), []);
  t.same(s.sweep(110), [{ kind: 'close', connId: c, reason: 'idle_timeout' }]);

  const r2 = s.acquire('a', K, 200);
  const c2 = assigns(openAll(s, r2.actions, 200))[0].connId;
  t.same(s.release(c2, 1200, true), [{ kind: 'close', connId: c2, reason: 'lifetime' }]);
});

t.test('ten thousand acquire/release cycles stay balanced', async (t) => {
  const s = make(4, { a: 2, b: 2 });
  const held: number[] = [];
  let now = 0;
  for (let i = 0; i < 10_000; i++) {
    const svc = i % 3 === 0 ? 'b' : 'a';
    const { actions } = s.acquire(svc, K, now++);
    const all = [...actions, ...openAll(s, actions, now)];
    for (const a of assigns(all)) held.push(a.connId);
    if (held.length > 3 || i % 2) {
      const c = held.shift();
      if (c !== undefined) for (const a of assigns(s.release(c, now, true))) held.push(a.connId);
    }
    if (s.totalHeld > 4) t.fail(`cap exceeded at ${i}`);
  }
  t.ok(s.totalHeld <= 4);
});

t.test('a waiter put back keeps its place at the head of the queue', async (t) => {
  const s = make(10, { a: 1 });
  const r0 = s.acquire('a', K, 0);
  const c = assigns(openAll(s, r0.actions))[0].connId;
  const r1 = s.acquire('a', K, 1);
  const r2 = s.acquire('a', K, 2);
  const handed = assigns(s.release(c, 3, true));
  t.same(handed.map((a) => a.waiter.id), [r1.waiter.id]);
  s.requeue(r1.waiter);
  t.equal(s.counts('a').waiting, 2);
  const next = assigns(s.release(c, 4, true));
  t.same(next.map((a) => a.waiter.id), [r1.waiter.id], 'the requeued waiter is served before the later one');
  void r2;
});

t.test('a waiter put back behind an older waiter of another key: the older one still times out on time', async (t) => {
  const K2 = 'app\0other';
  const s = make(10, { a: 2 }, { timeoutMs: 1000 });
  const first = s.acquire('a', K2, 0);
  const c2 = assigns(openAll(s, first.actions))[0].connId;
  const old = s.acquire('a', K, 0); // its connection opens (the budget's second) and takes a while
  t.same(kinds(old.actions), ['open']);
  const late = s.acquire('a', K2, 500);
  t.same(assigns(s.release(c2, 600, true)).map((a) => a.waiter.id), [late.waiter.id], 'the K2 connection goes to the K2 waiter');
  // It went bad before the client got it: the client goes back, the connection closes.
  s.requeue(late.waiter);
  t.same(kinds(s.release(c2, 600, false)), ['close']);
  t.equal(s.oldestWaitMs('a', 700), 700, 'the oldest waiter is still first');
  const swept = s.sweep(1000);
  t.same(
    swept.filter((a) => a.kind === 'reject').map((a) => a.kind === 'reject' && [a.waiter.id, a.reason, a.waitedMs]),
    [[old.waiter.id, 'queue_timeout', 1000]],
    'the older one times out at 1000 ms, the requeued one waits on',
  );
});

t.test('a cap lowered by reload closes idle connections and released ones above it', async (t) => {
  const s = make(4, { a: 4 });
  const r = [0, 1, 2, 3].map(() => s.acquire('a', K, 0));
  const conns = assigns(openAll(s, r.flatMap((x) => x.actions))).map((a) => a.connId);
  s.release(conns[0], 1, true);
  s.release(conns[1], 1, true);
  s.setPoolLimits({ cap: 1, idleTimeoutMs: 60_000, lifetimeMs: 3_600_000 });
  t.same(kinds(s.sweep(2)), ['close', 'close'], 'both idle connections close');
  t.same(kinds(s.release(conns[2], 3, true)), ['close'], 'a released one above the cap closes');
  t.same(kinds(s.release(conns[3], 3, true)), [], 'the last one fits under the cap');
});

t.test('a pinned service (the headroom reading) keeps its idle connection when the cap falls below what is in use', async (t) => {
  const s = make(9, { app: 10 });
  s.setService('reading', { ...limits(1), pinned: true });
  const reading = s.acquire('reading', K, 0);
  const readingConn = assigns(openAll(s, reading.actions))[0].connId;
  s.release(readingConn, 1, true);
  const r = Array.from({ length: 8 }, () => s.acquire('app', K, 1));
  const conns = assigns(openAll(s, r.flatMap((x) => x.actions))).map((a) => a.connId);
  t.equal(conns.length, 8);
  s.setPoolLimits({ cap: 8, idleTimeoutMs: 60_000, lifetimeMs: 3_600_000 });
  t.same(kinds(s.sweep(2)), [], 'the reading connection stays, nothing in use closes');
  const next = s.acquire('reading', K, 3);
  t.same(next.actions, [{ kind: 'assign', waiter: next.waiter, connId: readingConn, waitedMs: 0 }], 'the next reading runs at once, on it');
  t.same(kinds(s.release(readingConn, 4, true)), [], 'and keeps it');
  t.same(kinds(s.release(conns[0], 5, true)), ['close'], "a client's released connection closes for the cap");
  // The cap keeps a service waiting: the reading's idle connection makes room in turn, as any would.
  s.closed(conns[0], 5);
  s.setService('other', limits(2));
  t.same(kinds(s.acquire('other', K, 6).actions), ['close'], 'evicted for a service the cap blocks');
});

t.test('takeIdleNow: an idle connection of the key when nobody waits, else 0 and no change', async (t) => {
  const s = make(10, { a: 1 });
  t.equal(s.takeIdleNow('a', K), 0, 'nothing idle yet');
  const r1 = s.acquire('a', K, 0);
  const connId = assigns(openAll(s, r1.actions))[0].connId;
  s.release(connId, 1, true);
  t.equal(s.takeIdleNow('a', 'other\0db'), 0, 'another key does not match');
  t.equal(s.takeIdleNow('a', K), connId);
  t.same(s.counts('a'), { service: 'a', budget: 1, held: 1, active: 1, idle: 0, opening: 0, closing: 0, waiting: 0 });
  // Someone queues while it is held; once it is idle again, the queue comes first.
  const queued = s.acquire('a', K, 2);
  t.equal(s.counts('a').waiting, 1);
  const handoff = s.release(connId, 3, true);
  t.same(assigns(handoff).map((a) => a.waiter.id), [queued.waiter.id]);
  s.acquire('a', K, 4);
  s.release(connId, 5, true); // hands it to the new waiter
  s.acquire('a', K, 6);
  t.equal(s.takeIdleNow('a', K), 0, 'a waiter ahead: the fast path declines');
  t.equal(s.counts('a').active, 1);
});

t.test('a removed service keeps its budget until retired, then closes its idle connections and is forgotten', async (t) => {
  const s = make(10, { a: 2, b: 2 });
  const r = [s.acquire('a', K, 0), s.acquire('a', K, 0)];
  const given = assigns(openAll(s, r.flatMap((x) => x.actions)));
  t.equal(given.length, 2, 'served under its budget');
  s.release(given[0].connId, 1, true);
  // Still in use by a client: not forgotten; the idle one closes.
  const first: Action[] = [];
  t.notOk(s.retire('a', 2, first), 'kept while it holds a connection in use');
  t.same(first.map((a) => a.kind === 'close' && a.reason), ['removed_service']);
  t.ok(s.hasService('a'));
  s.release(given[1].connId, 3, true);
  const second: Action[] = [];
  t.notOk(s.retire('a', 4, second), 'kept while connections are closing');
  for (const a of [...first, ...second]) if (a.kind === 'close') s.closed(a.connId, 5);
  t.ok(s.retire('a', 6, []), 'forgotten once it holds nothing');
  t.notOk(s.hasService('a'));
  t.equal(s.totalHeld, 0);
  const other = s.acquire('b', K, 7);
  t.same(kinds(other.actions), ['open'], 'the other service goes on');
});

t.test('audit: every count is its list, and a count that drifted from its list is found', async (t) => {
  const s = make(4, { a: 2, b: 2 });
  const r = [s.acquire('a', K, 0), s.acquire('a', 'u2\0db', 0), s.acquire('a', K, 0), s.acquire('b', K, 0)];
  const given = assigns(openAll(s, r.flatMap((x) => x.actions)));
  s.release(given[0].connId, 1, true);
  t.equal(s.audit(), null, 'consistent after opens, hand-outs, a release and a waiter');
  (s as unknown as { totals: { idle: { size: number } } }).totals.idle.size++;
  t.match(s.audit(), /idle in all/, 'a total that no longer matches the lists');
});

t.test('an event out of order for a connection is refused and changes nothing', async (t) => {
  const s = make(4, { a: 2 });
  const r = s.acquire('a', K, 0);
  const id = opens(r.actions)[0].connId;
  s.opened(id, 1); // handed to the waiter at once
  t.equal(s.connState(id), 'active');
  t.throws(() => s.opened(id, 2), /connection .* is active/, 'opened twice');
  t.equal(s.audit(), null);
  s.release(id, 3, true);
  t.throws(() => s.release(id, 4, true), /release of connection .* in state idle/);
  t.same(s.closing(id, 5), []);
  t.throws(() => s.opened(id, 6), /connection .* is closing/);
  s.closed(id, 7);
  t.equal(s.connState(id), undefined);
  t.equal(s.audit(), null);
});
