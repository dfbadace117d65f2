// Time at budget (Scheduler.atBudgetMs): a service is at its budget while it
// holds as many server connections as its budget allows (opening, active,
// idle or closing: what the budget counts), so it could open no other. Kept
// exactly at the opens and closes; a budget a reload changes is seen at the
// next sweep.
import fc from 'fast-check';
import t from 'tap';
import { Scheduler, type Action } from '../../src/budget/scheduler.js';

const K = 'app\0db';
const make = (budget: number) => {
  const s = new Scheduler({ cap: 10, idleTimeoutMs: 600_000, lifetimeMs: 3_600_000 });
  s.setService('a', { budget, maxWaiting: 100, timeoutMs: 600_000 });
  return s;
};
const opened = (actions: Action[]) => actions.filter((a) => a.kind === 'open').map((a) => a.connId);
const assigned = (actions: Action[]) => actions.filter((a) => a.kind === 'assign').map((a) => a.connId);

t.test('from the open that fills the budget to the close that frees a slot', async (t) => {
  const s = make(2);
  const first = opened(s.acquire('a', K, 0).actions);
  t.equal(s.atBudgetMs('a', 50), 0, 'one of two: room left');
  const second = opened(s.acquire('a', K, 100).actions);
  const conns = [...assigned(s.opened(first[0], 110)), ...assigned(s.opened(second[0], 120))];
  t.equal(s.atBudgetMs('a', 300), 200, 'at budget since the second open was decided (opening counts)');
  s.release(conns[0], 400, false);
  t.equal(s.atBudgetMs('a', 450), 350, 'a closing connection still counts');
  s.closed(conns[0], 500);
  t.equal(s.atBudgetMs('a', 900), 400, 'its socket closed: room again, 400 ms at budget in all');
  t.equal(s.atBudgetMs('a', 5000), 400);
});

t.test('a budget a reload changes is seen at the next sweep', async (t) => {
  const s = make(2);
  const c = assigned(s.opened(opened(s.acquire('a', K, 0).actions)[0], 0))[0];
  s.release(c, 10, true);
  s.setService('a', { budget: 1, maxWaiting: 100, timeoutMs: 600_000 });
  s.sweep(1000);
  t.equal(s.atBudgetMs('a', 1500), 500, 'budget 1 with one idle connection: at budget from the sweep');
  s.setService('a', { budget: 3, maxWaiting: 100, timeoutMs: 600_000 });
  s.sweep(2000);
  t.equal(s.atBudgetMs('a', 9000), 1000, 'raised again: room from the sweep on');
});

t.test('under random opens, hand-outs, releases and closes it is the time held >= budget, to the millisecond', async (t) => {
  type Step = { gap: number; kind: 'acquire' | 'opened' | 'release' | 'closed' | 'sweep'; pick: number; reusable: boolean };
  const step = fc.record({
    gap: fc.nat(50),
    kind: fc.constantFrom('acquire', 'opened', 'release', 'closed', 'sweep') as fc.Arbitrary<Step['kind']>,
    pick: fc.nat(20),
    reusable: fc.boolean(),
  });
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 4 }), fc.array(step, { maxLength: 200 }), (budget, steps) => {
      const s = make(budget);
      const opening: number[] = [];
      const active: number[] = [];
      const closing: number[] = [];
      const take = (list: number[], pick: number) => (list.length === 0 ? undefined : list.splice(pick % list.length, 1)[0]);
      const apply = (actions: Action[]) => {
        for (const a of actions) {
          if (a.kind === 'open') opening.push(a.connId);
          else if (a.kind === 'assign') active.push(a.connId);
          else if (a.kind === 'close') closing.push(a.connId);
        }
      };
      let now = 0;
      let expected = 0;
      let full = false;
      for (const { gap, kind, pick, reusable } of steps) {
        if (full) expected += gap;
        now += gap;
        if (kind === 'acquire') apply(s.acquire('a', K, now).actions);
        else if (kind === 'opened') {
          const id = take(opening, pick);
          if (id !== undefined) apply(s.opened(id, now));
        } else if (kind === 'release') {
          const id = take(active, pick);
          if (id !== undefined) apply(s.release(id, now, reusable));
        } else if (kind === 'closed') {
          const id = take(closing, pick);
          if (id !== undefined) apply(s.closed(id, now));
        } else apply(s.sweep(now));
        if (s.atBudgetMs('a', now) !== expected) return false;
        full = s.counts('a').held >= budget;
      }
      return true;
    }),
    { numRuns: 300 },
  );
});
