// Dry-run budgets (enforce: false), without sockets: the seats and the
// would-be queue (what enforcing the budget would have done), the scheduler
// letting the service past its budget but never past the cap, the slots it
// borrowed going back first, and the episodes that become log lines.
import t from 'tap';
import { DryRunEpisodes, SEATED, WouldBe, wouldCounts, type DryRunSample, type SeatHolder } from '../../src/budget/dryRun.js';
import { Scheduler, type Action } from '../../src/budget/scheduler.js';
import { assigns, closes, openAll, opens } from '../helpers/actions.js';

const K = 'app\0db';
const holder = (): SeatHolder => ({ seat: null });

t.test('seats: within the budget a client sits; beyond it it would wait, then would be refused', async (t) => {
  const counts = wouldCounts();
  const wb = new WouldBe(counts);
  const h = [holder(), holder(), holder(), holder(), holder()];
  // budget 2, maxWaiting 2
  for (const [i, x] of h.entries()) wb.start(x, i, 2, 2);
  t.same(
    h.map((x) => (x.seat === SEATED ? 'seated' : x.seat === null ? 'none' : 'queued')),
    ['seated', 'seated', 'queued', 'queued', 'none'],
  );
  t.equal(wb.seated, 2);
  t.same(counts, { wouldWait: 2, wouldReject: { queue_full: 1, queue_timeout: 0 } });
  t.equal(wb.oldestWaitMs(10), 8, 'the third client would have waited since t=2');
  // A seated client finishes: the head of the would-be queue gets its seat.
  wb.stop(h[0], 2);
  t.equal(h[2].seat, SEATED);
  t.equal(wb.queue.size, 1);
  // A client beyond the budget finishes before its turn: it leaves the queue, no seat changes.
  wb.stop(h[3], 2);
  t.equal(wb.queue.size, 0);
  t.equal(wb.seated, 2);
  // The one refused holds nothing.
  wb.stop(h[4], 2);
  t.equal(wb.seated, 2);
  t.same(counts.wouldWait, 2, 'finishing counts nothing more');
});

t.test('the sweep: a would-be waiter past timeoutMs would have timed out; a raised budget seats the queue', async (t) => {
  const counts = wouldCounts();
  const wb = new WouldBe(counts);
  const h = [holder(), holder(), holder(), holder()];
  for (const [i, x] of h.entries()) wb.start(x, i * 100, 1, 10);
  t.equal(wb.queue.size, 3);
  wb.sweep(1050, 1, 1000); // h[1] entered at 100: 950 ms, still within
  t.equal(counts.wouldReject.queue_timeout, 0);
  wb.sweep(1150, 1, 1000); // h[1] at 1050 ms
  t.equal(counts.wouldReject.queue_timeout, 1);
  t.equal(h[1].seat, null, 'timed out: counted once, holds nothing');
  wb.sweep(1150, 2, 1000); // budget raised to 2
  t.equal(h[2].seat, SEATED);
  t.equal(wb.seated, 2);
  t.equal(wb.queue.size, 1);
  // A seat never goes past the budget in force when the client starts.
  const late = holder();
  wb.start(late, 1200, 2, 10);
  t.not(late.seat, SEATED);
});


t.test('scheduler: a dry run goes past its budget, counts what enforcing would have done, and stops at the cap', async (t) => {
  const s = new Scheduler({ cap: 5, idleTimeoutMs: 60_000, lifetimeMs: 3_600_000 });
  s.setService('d', { budget: 2, maxWaiting: 1, timeoutMs: 1000, enforce: false });
  // One at a time, each connection opened before the next client comes (the real queue holds 1).
  const acts: Action[] = [];
  const handed: Action[] = [];
  for (let i = 0; i < 6; i++) {
    const r = s.acquire('d', K, i);
    acts.push(...r.actions);
    handed.push(...openAll(s, r.actions, i));
  }
  t.equal(opens(acts).length, 5, 'five open: the cap, not the budget of 2');
  t.equal(assigns(handed).length, 5);
  t.same(s.counts('d').waiting, 1, 'the sixth waits for real: the cap is enforced');
  t.same(s.wouldCounts('d'), { wouldWait: 1, wouldReject: { queue_full: 2, queue_timeout: 0 } }, 'two seats, one would-be waiter (maxWaiting 1), two refused');
  t.same(s.wouldBeWaiting('d', 10), { waiting: 1, oldestWaitMs: 8 });
  t.equal(s.audit(), null);
  // The seated ones finish; the would-be waiter takes a seat, and the real waiter gets a connection.
  const first = assigns(handed)[0].connId;
  const after = s.release(first, 500, true);
  t.equal(assigns(after).length, 1, 'the released connection goes to the real waiter');
  // The would-be waiter took the freed seat; the real waiter, served with no seat free, would have waited in its place.
  t.same(s.wouldBeWaiting('d', 500), { waiting: 1, oldestWaitMs: 0 });
  t.equal(s.wouldCounts('d').wouldWait, 2);
  t.equal(s.audit(), null);
});

t.test('scheduler: the would-be queue times out in the sweep', async (t) => {
  const s = new Scheduler({ cap: 10, idleTimeoutMs: 60_000, lifetimeMs: 3_600_000 });
  s.setService('d', { budget: 1, maxWaiting: 10, timeoutMs: 1000, enforce: false });
  const acts = [0, 1, 2].flatMap((i) => s.acquire('d', K, i).actions);
  openAll(s, acts, 5);
  t.equal(s.wouldCounts('d').wouldWait, 2);
  s.sweep(900);
  t.equal(s.wouldCounts('d').wouldReject.queue_timeout, 0);
  s.sweep(1010);
  t.equal(s.wouldCounts('d').wouldReject.queue_timeout, 2, 'both beyond the budget for 1005 ms');
  t.same(s.wouldBeWaiting('d', 1010), { waiting: 0, oldestWaitMs: 0 });
  t.equal(s.audit(), null);
});

t.test('scheduler: beyond its budget a dry run only borrows the cap; a service within its budget comes first', async (t) => {
  const s = new Scheduler({ cap: 4, idleTimeoutMs: 60_000, lifetimeMs: 3_600_000 });
  s.setService('d', { budget: 1, maxWaiting: 100, timeoutMs: 60_000, enforce: false });
  s.setService('e', { budget: 3, maxWaiting: 100, timeoutMs: 60_000 });
  const d = [0, 1, 2, 3].map((i) => s.acquire('d', K, i));
  const dConns = assigns(openAll(s, d.flatMap((x) => x.actions), 1)).map((a) => a.connId);
  t.equal(dConns.length, 4, 'with nobody else, the dry run takes the whole cap');
  // An enforced service within its budget now waits at the cap.
  const e1 = s.acquire('e', K, 2);
  t.same(e1.actions, [], 'the cap is full: it waits');
  // The dry run releases a borrowed connection: it closes for e, not kept.
  const rel = s.release(dConns[3], 3, true);
  t.same(closes(rel).map((c) => c.reason), ['evicted']);
  const reopened = s.closed(closes(rel)[0].connId, 4);
  t.equal(opens(reopened)[0].service, 'e', 'the slot goes to the service within its budget');
  // Both want a slot when one frees: e (within budget) gets it, d (borrowing) waits.
  const d5 = s.acquire('d', K, 5);
  const e2 = s.acquire('e', K, 5);
  t.same([...d5.actions, ...e2.actions], []);
  const freed = s.release(dConns[2], 6, true);
  const closed = s.closed(closes(freed)[0].connId, 7);
  t.same(opens(closed).map((o) => o.service), ['e']);
  t.equal(s.audit(), null);
});

t.test("scheduler: the cap needs room: a dry run's borrowed idle connections close before anyone else's", async (t) => {
  const s = new Scheduler({ cap: 4, idleTimeoutMs: 60_000, lifetimeMs: 3_600_000 });
  s.setService('e', { budget: 2, maxWaiting: 100, timeoutMs: 60_000 });
  s.setService('d', { budget: 1, maxWaiting: 100, timeoutMs: 60_000, enforce: false });
  const e = assigns(openAll(s, s.acquire('e', K, 0).actions, 0)).map((a) => a.connId);
  s.release(e[0], 1, true); // e's idle connection is the oldest idle one
  const d = assigns(openAll(s, [0, 1, 2].flatMap(() => s.acquire('d', K, 2).actions), 2)).map((a) => a.connId);
  t.equal(d.length, 3);
  for (const id of d) s.release(id, 3, true);
  t.equal(s.totalHeld, 4);
  // A third service needs a slot at the cap: one of d's borrowed idle connections closes, not e's older one.
  s.setService('f', { budget: 1, maxWaiting: 100, timeoutMs: 60_000 });
  const f = s.acquire('f', K, 4);
  const evicted = closes(f.actions);
  t.equal(evicted.length, 1);
  t.ok(d.includes(evicted[0].connId), "a borrowed connection of the dry run, though e's idle one is older");
  // A cap lowered by a reload: borrowed idle connections close first too.
  s.setPoolLimits({ cap: 2, idleTimeoutMs: 60_000, lifetimeMs: 3_600_000 });
  const swept = closes(s.sweep(5));
  t.ok(swept.every((c) => d.includes(c.connId)), 'only the dry run gives back for the lowered cap');
  t.equal(s.audit(), null);
});

t.test('scheduler: a reload to enforce: true makes the budget real; to false, a dry run from there on', async (t) => {
  const s = new Scheduler({ cap: 10, idleTimeoutMs: 60_000, lifetimeMs: 3_600_000 });
  s.setService('d', { budget: 1, maxWaiting: 100, timeoutMs: 60_000, enforce: false });
  const conns = assigns(openAll(s, [0, 1, 2].flatMap(() => s.acquire('d', K, 0).actions), 0)).map((a) => a.connId);
  t.equal(conns.length, 3);
  s.setService('d', { budget: 1, maxWaiting: 100, timeoutMs: 60_000, enforce: true });
  t.equal(s.wouldBeWaiting('d', 1), null, 'enforced: no would-be queue');
  t.equal(s.audit(), null);
  const next = s.acquire('d', K, 1);
  t.same(next.actions, [], 'enforced: over its budget, the next client waits');
  t.same(closes(s.release(conns[0], 2, true)).map((c) => c.reason), ['over_budget'], 'connections over the budget close as they come back');
  t.same(closes(s.release(conns[1], 2, true)).map((c) => c.reason), ['over_budget']);
  t.same(assigns(s.release(conns[2], 2, true)).map((a) => a.waiter.id), [next.waiter.id], 'within the budget again, the released one goes to the waiter');
  t.equal(s.wouldCounts('d').wouldWait, 2, 'the counts stay: they are counters');
  s.setService('d', { budget: 1, maxWaiting: 100, timeoutMs: 60_000, enforce: false });
  t.same(s.wouldBeWaiting('d', 3), { waiting: 0, oldestWaitMs: 0 });
  t.equal(s.audit(), null);
});

const sample = (over: Partial<DryRunSample>): DryRunSample => ({
  wouldWait: 0,
  wouldReject: { queue_full: 0, queue_timeout: 0 },
  inUse: 0,
  budget: 2,
  wouldBeWaiting: 0,
  oldestWouldWaitMs: 0,
  ...over,
});

t.test('episodes: one start when enforcing would first have made someone wait, one end after 5 s with nobody beyond the budget', async (t) => {
  const ep = new DryRunEpisodes();
  t.equal(ep.evaluate(0, sample({ inUse: 2 })), null, 'at the budget, nobody beyond it');
  const start = ep.evaluate(1000, sample({ wouldWait: 3, inUse: 5, wouldBeWaiting: 3, oldestWouldWaitMs: 400 }));
  t.same(start, { kind: 'start', inUse: 5, budget: 2, wouldBeWaiting: 3, oldestWouldWaitMs: 400 });
  t.equal(ep.evaluate(2000, sample({ wouldWait: 9, wouldReject: { queue_full: 1, queue_timeout: 0 }, inUse: 8, wouldBeWaiting: 6 })), null, 'one line per episode');
  t.equal(ep.evaluate(3000, sample({ wouldWait: 9, wouldReject: { queue_full: 1, queue_timeout: 2 }, inUse: 2 })), null);
  t.equal(ep.evaluate(7000, sample({ wouldWait: 9, wouldReject: { queue_full: 1, queue_timeout: 2 }, inUse: 2 })), null, '4 s quiet: not yet');
  const end = ep.evaluate(8000, sample({ wouldWait: 9, wouldReject: { queue_full: 1, queue_timeout: 2 }, inUse: 1 }));
  t.same(end, { kind: 'end', durationMs: 7000, budget: 2, wouldWait: 9, wouldReject: { queue_full: 1, queue_timeout: 2 }, peakInUse: 8, peakWouldBeWaiting: 6 });
  t.notOk(ep.active);
  // The next episode counts from its own start.
  const again = ep.evaluate(9000, sample({ wouldWait: 10, inUse: 3, wouldBeWaiting: 1, wouldReject: { queue_full: 1, queue_timeout: 2 } }));
  t.equal(again?.kind, 'start');
  const end2 = ep.evaluate(20_000, sample({ wouldWait: 10, inUse: 0, wouldReject: { queue_full: 1, queue_timeout: 2 } }));
  t.same(end2 && end2.kind === 'end' ? [end2.wouldWait, end2.wouldReject] : null, [1, { queue_full: 0, queue_timeout: 0 }]);
});
