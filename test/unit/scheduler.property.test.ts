// The scheduler under random event sequences: clients asking, opens that
// succeed or fail, releases (reusable or not), closes, clients leaving the
// queue, time passing (queue timeouts, idle expiry) and reloads with other
// budgets. A model built only from the actions the scheduler returns is
// checked against its counts after every event, with the rules that make
// it a budget: total within the cap, in use within the budget when handed
// out, and no waiter left waiting while capacity it could use sits idle.
import fc from 'fast-check';
import t from 'tap';
import { Scheduler, type Action, type Waiter } from '../../src/budget/scheduler.js';

const SERVICES = ['a', 'b', 'c'] as const;
const KEYS = ['k1', 'k2'] as const;
const CAP = 5;
const TIMEOUT_MS = 1000;
const IDLE_TIMEOUT_MS = 5000;

type Event =
  | { kind: 'acquire'; service: number; key: number }
  | { kind: 'opened'; pick: number; ok: boolean }
  | { kind: 'release'; pick: number; reusable: boolean }
  | { kind: 'closed'; pick: number }
  | { kind: 'cancel'; pick: number }
  | { kind: 'tick'; ms: number }
  | { kind: 'reload'; service: number; budget: number };

const event: fc.Arbitrary<Event> = fc.oneof(
  { weight: 5, arbitrary: fc.record({ kind: fc.constant('acquire' as const), service: fc.nat(2), key: fc.nat(1) }) },
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('opened' as const), pick: fc.nat(), ok: fc.boolean() }) },
  { weight: 5, arbitrary: fc.record({ kind: fc.constant('release' as const), pick: fc.nat(), reusable: fc.boolean() }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('closed' as const), pick: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('cancel' as const), pick: fc.nat() }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('tick' as const), ms: fc.integer({ min: 1, max: 3000 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('reload' as const), service: fc.nat(2), budget: fc.integer({ min: 1, max: 4 }) }) },
);

type ConnState = 'opening' | 'idle' | 'active' | 'closing';

interface ModelConn {
  id: number;
  service: string;
  key: string;
  state: ConnState;
}

class Model {
  readonly conns = new Map<number, ModelConn>();
  readonly waiting: Waiter[] = [];

  in(state: ConnState, service?: string): ModelConn[] {
    return [...this.conns.values()].filter((c) => c.state === state && (service === undefined || c.service === service));
  }

  /** Follows the scheduler's actions; returns what makes no sense, or null. */
  apply(actions: Action[]): string | null {
    for (const a of actions) {
      if (a.kind === 'open') {
        if (this.conns.has(a.connId)) return `open of a known connection ${a.connId}`;
        this.conns.set(a.connId, { id: a.connId, service: a.service, key: a.key, state: 'opening' });
      } else if (a.kind === 'assign') {
        const c = this.conns.get(a.connId);
        const w = this.waiting.indexOf(a.waiter);
        if (!c || c.state !== 'idle') return `assign of connection ${a.connId} in state ${c?.state}`;
        if (w < 0) return `assign to a waiter that is not waiting (${a.waiter.id})`;
        if (c.service !== a.waiter.service || c.key !== a.waiter.key) return 'assign across services or keys';
        this.waiting.splice(w, 1);
        c.state = 'active';
      } else if (a.kind === 'close') {
        const c = this.conns.get(a.connId);
        if (!c || c.state === 'closing' || c.state === 'opening') return `close of connection ${a.connId} in state ${c?.state}`;
        c.state = 'closing';
      } else {
        const w = this.waiting.indexOf(a.waiter);
        if (w < 0) return 'reject of a waiter that is not waiting';
        this.waiting.splice(w, 1);
      }
    }
    return null;
  }
}

/** The invariants after one event; `assignedTo` are the services that were handed a connection by it. */
function invariants(s: Scheduler, m: Model, budget: Map<string, number>, assignedTo: Set<string>): string | null {
  const total = m.conns.size;
  if (s.totalHeld !== total) return `totalHeld ${s.totalHeld} but the model holds ${total}`;
  if (total > CAP) return `the cap of ${CAP} is exceeded: ${total}`;
  for (const name of SERVICES) {
    const c = s.counts(name);
    const want = {
      held: [...m.conns.values()].filter((x) => x.service === name).length,
      active: m.in('active', name).length,
      idle: m.in('idle', name).length,
      opening: m.in('opening', name).length,
      closing: m.in('closing', name).length,
      waiting: m.waiting.filter((w) => w.service === name).length,
    };
    for (const [k, v] of Object.entries(want)) {
      if (c[k as keyof typeof want] !== v) return `${name}.${k} is ${c[k as keyof typeof want]}, the model says ${v}`;
    }
    const b = budget.get(name)!;
    if (assignedTo.has(name) && want.active > b) return `${name} handed out a connection with ${want.active} in use, over its budget ${b}`;
    // No waiter starved while capacity it could use sits idle.
    for (const w of m.waiting.filter((x) => x.service === name)) {
      if (m.in('idle', name).some((x) => x.key === w.key)) return `${name} keeps an idle ${w.key} connection while a ${w.key} client waits`;
      if (m.in('opening', name).some((x) => x.key === w.key)) continue;
      if (want.held < b && total < CAP) return `${name} waits for ${w.key} under its budget and the cap, and nothing opens`;
      if (want.held >= b) {
        // At its budget: an idle connection of its other key must make room.
        if (want.idle > 0 && want.closing === 0) return `${name} waits for ${w.key} at its budget and keeps idle connections of another key`;
      } else if (m.in('idle').length > 0 && m.in('closing').length === 0) {
        return `${name} waits under its budget while idle connections fill the cap`;
      }
    }
  }
  return null;
}

/** Runs the events, checking after each; returns the first invariant broken, or null. */
function run(events: Event[], budgets: number[]): string | null {
  const s = new Scheduler({ cap: CAP, idleTimeoutMs: IDLE_TIMEOUT_MS, lifetimeMs: 3_600_000 });
  const budget = new Map<string, number>();
  SERVICES.forEach((name, i) => {
    budget.set(name, budgets[i]);
    s.setService(name, { budget: budgets[i], maxWaiting: 6, timeoutMs: TIMEOUT_MS });
  });
  const m = new Model();
  let now = 0;
  for (const e of events) {
    let actions: Action[];
    if (e.kind === 'acquire') {
      const r = s.acquire(SERVICES[e.service], KEYS[e.key], now);
      m.waiting.push(r.waiter);
      actions = r.actions;
    } else if (e.kind === 'opened') {
      const opening = m.in('opening');
      if (opening.length === 0) continue;
      const c = opening[e.pick % opening.length];
      if (e.ok) {
        c.state = 'idle';
        actions = s.opened(c.id, now);
      } else {
        m.conns.delete(c.id);
        actions = s.closed(c.id, now);
      }
    } else if (e.kind === 'release') {
      const active = m.in('active');
      if (active.length === 0) continue;
      const c = active[e.pick % active.length];
      c.state = 'idle';
      actions = s.release(c.id, now, e.reusable);
    } else if (e.kind === 'closed') {
      const closing = m.in('closing');
      if (closing.length === 0) continue;
      const c = closing[e.pick % closing.length];
      m.conns.delete(c.id);
      actions = s.closed(c.id, now);
    } else if (e.kind === 'cancel') {
      if (m.waiting.length === 0) continue;
      actions = s.cancel(m.waiting.splice(e.pick % m.waiting.length, 1)[0], now);
    } else if (e.kind === 'tick') {
      now += e.ms;
      actions = s.sweep(now);
    } else {
      const name = SERVICES[e.service];
      budget.set(name, e.budget);
      s.setService(name, { budget: e.budget, maxWaiting: 6, timeoutMs: TIMEOUT_MS });
      actions = s.sweep(now);
    }
    const broken = m.apply(actions) ?? invariants(s, m, budget, new Set(actions.flatMap((a) => (a.kind === 'assign' ? [a.waiter.service] : []))));
    if (broken) return `${broken} (after ${JSON.stringify(e)})`;
  }
  return null;
}

t.test('random event sequences keep the budget, the cap, the counts and the queue honest', async (t) => {
  let failure: string | null = null;
  const budgets = fc.tuple(fc.integer({ min: 1, max: 4 }), fc.integer({ min: 1, max: 4 }), fc.integer({ min: 1, max: 4 }));
  const verdict = fc.check(
    fc.property(fc.array(event, { minLength: 1, maxLength: 200, size: 'max' }), budgets, (events, b) => {
      failure = run(events, b);
      return failure === null;
    }),
    { numRuns: 2000 },
  );
  // The shrunk counterexample's own failure, in words.
  if (verdict.failed && verdict.counterexample) failure = run(...verdict.counterexample);
  t.equal(failure, null, verdict.failed ? `counterexample: ${JSON.stringify(verdict.counterexample)}` : `${verdict.numRuns} random sequences`);
});
