// The scheduler under random event sequences: clients asking (through the
// fast path or the queue), opens that succeed or fail (for a while, or for
// good: the login is refused), releases (reusable or not), closes the
// scheduler asked for and closes the I/O layer decided on its own, clients
// leaving the queue, a client put back at the head of the queue (its
// connection went bad before it got it), time passing (queue timeouts,
// idle expiry) and reloads with other budgets or another cap. A model built
// only from the actions the scheduler returns is checked against its counts
// after every event, with the rules that make it a budget: total within the
// cap, in use within the budget and the cap when handed out, every count
// equal to its list (the scheduler's own audit), no idle connection kept
// over a lowered budget or cap, and no waiter left waiting while capacity
// it could use sits idle, or while other services take turn after turn at
// the cap. Service c may be pinned (the headroom reading's service): its
// idle connections stay when the cap falls below what is held. Service c may be pinned (the headroom reading's service): its
// connections stay when the cap falls below what is held, and no other
// service's waiters take them.
import fc from 'fast-check';
import t from 'tap';
import { Scheduler, type Action, type Waiter } from '../../src/budget/scheduler.js';

const SERVICES = ['a', 'b', 'c'] as const;
const KEYS = ['k1', 'k2'] as const;
const CAP = 5;
const MAX_WAITING = 6;
const TIMEOUT_MS = 1000;
const IDLE_TIMEOUT_MS = 5000;

type Event =
  | { kind: 'acquire'; service: number; key: number; fast: boolean }
  | { kind: 'opened'; pick: number; ok: boolean }
  | { kind: 'refused'; pick: number }
  | { kind: 'release'; pick: number; reusable: boolean }
  | { kind: 'closed'; pick: number }
  | { kind: 'dropped'; pick: number }
  | { kind: 'cancel'; pick: number }
  | { kind: 'requeue'; pick: number }
  | { kind: 'tick'; ms: number }
  | { kind: 'reload'; service: number; budget: number; enforce: boolean }
  | { kind: 'cap'; cap: number }
  | { kind: 'ceiling'; service: number; ceiling: number | null };

const event: fc.Arbitrary<Event> = fc.oneof(
  { weight: 5, arbitrary: fc.record({ kind: fc.constant('acquire' as const), service: fc.nat(2), key: fc.nat(1), fast: fc.boolean() }) },
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('opened' as const), pick: fc.nat(), ok: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('refused' as const), pick: fc.nat() }) },
  { weight: 5, arbitrary: fc.record({ kind: fc.constant('release' as const), pick: fc.nat(), reusable: fc.boolean() }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('closed' as const), pick: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('dropped' as const), pick: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('cancel' as const), pick: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('requeue' as const), pick: fc.nat() }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('tick' as const), ms: fc.integer({ min: 1, max: 3000 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('reload' as const), service: fc.nat(2), budget: fc.integer({ min: 1, max: 4 }), enforce: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('cap' as const), cap: fc.integer({ min: 1, max: 6 }) }) },
  // Coordination's ceiling of an enforced service (its share of a budget other instances hold too); null: none.
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('ceiling' as const), service: fc.nat(2), ceiling: fc.option(fc.integer({ min: 0, max: 4 })) }) },
);

type ConnState = 'opening' | 'idle' | 'active' | 'closing';

interface ModelConn {
  id: number;
  service: string;
  key: string;
  state: ConnState;
  /** The client it was handed to, while active. */
  holder?: Waiter;
}

class Model {
  readonly conns = new Map<number, ModelConn>();
  readonly waiting: Waiter[] = [];

  in(state: ConnState, service?: string): ModelConn[] {
    return [...this.conns.values()].filter((c) => c.state === state && (service === undefined || c.service === service));
  }

  /**
   * Services other than `except` that wait under their budget with nothing
   * opening for them and nothing closing anywhere: only the cap keeps them out.
   */
  capBlocked(budget: Map<string, number>, cap: number, except: string): string[] {
    if (this.conns.size < cap || this.in('closing').length > 0) return [];
    return SERVICES.filter(
      (name) =>
        name !== except &&
        this.waiting.some((w) => w.service === name) &&
        this.in('opening', name).length === 0 &&
        [...this.conns.values()].filter((c) => c.service === name).length < budget.get(name)!,
    );
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
        c.holder = a.waiter;
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

/** What one event did, as far as the invariants care. */
interface Effect {
  /** Services that were handed a connection by it. */
  assignedTo: Set<string>;
  opened: boolean;
  /** Connections held before it. */
  totalBefore: number;
}

function effect(actions: Action[], totalBefore: number, fastTo?: string): Effect {
  const assignedTo = new Set(actions.flatMap((a) => (a.kind === 'assign' ? [a.waiter.service] : [])));
  if (fastTo) assignedTo.add(fastTo);
  return { assignedTo, opened: actions.some((a) => a.kind === 'open'), totalBefore };
}

/** The invariants after one event. */
function invariants(s: Scheduler, m: Model, budget: Map<string, number>, dry: Set<string>, pinned: Set<string>, cap: number, e: Effect): string | null {
  const audit = s.audit();
  if (audit) return `the scheduler's lists disagree with its counts: ${audit}`;
  const total = m.conns.size;
  if (s.totalHeld !== total) return `totalHeld ${s.totalHeld} but the model holds ${total}`;
  // A lowered cap is not exceeded by anything new: connections in use close as they are released.
  if (total > cap && (e.opened || total > e.totalBefore)) return `the cap of ${cap} is exceeded: ${total}`;
  const inUse = m.in('active').length;
  const idleUnpinned = m.in('idle').filter((c) => !pinned.has(c.service)).length;
  if (total - m.in('closing').length > cap && idleUnpinned > 0) return `an idle connection is kept over the cap ${cap}`;
  // A pinned service may take its own idle connection back with the cap exceeded by connections in use.
  const assignedUnpinned = [...e.assignedTo].some((name) => !pinned.has(name));
  if (assignedUnpinned && inUse > cap) return `a connection was handed out with ${inUse} in use, over the cap ${cap}`;
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
    // A dry run's budget is only counted: beyond it, the service borrows from the cap.
    const enforced = !dry.has(name);
    if (enforced && e.assignedTo.has(name) && want.active > b) return `${name} handed out a connection with ${want.active} in use, over its budget ${b}`;
    // Over a lowered budget, connections close as they come back: none is kept idle.
    if (enforced && want.held - want.closing > b && want.idle > 0) return `${name} keeps an idle connection over its budget ${b}`;
    // No waiter starved while capacity it could use sits idle.
    for (const w of m.waiting.filter((x) => x.service === name)) {
      if (m.in('idle', name).some((x) => x.key === w.key)) return `${name} keeps an idle ${w.key} connection while a ${w.key} client waits`;
      if (m.in('opening', name).some((x) => x.key === w.key)) continue;
      if (want.held < b && total < cap) return `${name} waits for ${w.key} under its budget and the cap, and nothing opens`;
      if (!enforced && total < cap) return `${name} (a dry run) waits for ${w.key} under the cap, and nothing opens`;
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
function run(events: Event[], budgets: number[], dryRuns: boolean[], pinC: boolean): string | null {
  let cap = CAP;
  const limits = (c: number) => ({ cap: c, idleTimeoutMs: IDLE_TIMEOUT_MS, lifetimeMs: 3_600_000 });
  const s = new Scheduler(limits(cap));
  /** What the invariants hold each service to: its budget, or its ceiling when lower. */
  const budget = new Map<string, number>();
  const configured = new Map<string, number>();
  const ceilings = new Map<string, number>();
  const limitsOf = (name: string, enforce: boolean) => {
    const ceiling = ceilings.get(name);
    budget.set(name, Math.min(configured.get(name)!, ceiling ?? Infinity));
    return { budget: configured.get(name)!, maxWaiting: MAX_WAITING, timeoutMs: TIMEOUT_MS, enforce, ceiling, pinned: pinned.has(name) };
  };
  const dry = new Set<string>();
  const pinned = new Set<string>(pinC ? ['c'] : []);
  SERVICES.forEach((name, i) => {
    configured.set(name, budgets[i]);
    budget.set(name, budgets[i]);
    if (dryRuns[i]) dry.add(name);
    s.setService(name, { budget: budgets[i], maxWaiting: MAX_WAITING, timeoutMs: TIMEOUT_MS, enforce: !dryRuns[i], pinned: pinned.has(name) });
  });
  const m = new Model();
  let now = 0;
  /** Per service: the others that kept a released connection while the cap kept it waiting. */
  const passedOver = new Map<string, string[]>(SERVICES.map((name) => [name, []]));
  for (const e of events) {
    const totalBefore = m.conns.size;
    let actions: Action[];
    let fastTo: string | undefined;
    /** The actions are in the model already. */
    let applied = false;
    if (e.kind === 'acquire') {
      const service = SERVICES[e.service];
      const key = KEYS[e.key];
      // The pool's fast path first: an idle connection, nobody ahead.
      const fast = e.fast ? s.takeIdleNow(service, key) : 0;
      if (fast !== 0) {
        const c = m.conns.get(fast);
        if (!c || c.state !== 'idle' || c.service !== service || c.key !== key) return `takeIdleNow gave connection ${fast} (${c?.state} ${c?.service} ${c?.key})`;
        if (m.waiting.some((w) => w.service === service)) return `takeIdleNow served ${service} ahead of its queue`;
        c.state = 'active';
        c.holder = undefined;
        fastTo = service;
        actions = [];
      } else {
        const r = s.acquire(service, key, now);
        m.waiting.push(r.waiter);
        actions = r.actions;
      }
    } else if (e.kind === 'opened' || e.kind === 'refused') {
      const opening = m.in('opening');
      if (opening.length === 0) continue;
      const c = opening[e.pick % opening.length];
      if (e.kind === 'opened' && e.ok) {
        c.state = 'idle';
        actions = s.opened(c.id, now);
      } else {
        m.conns.delete(c.id);
        actions = s.closed(c.id, now);
        if (e.kind === 'refused') {
          // The login is refused for good: every client waiting for the key gets the error.
          const broken = m.apply(actions);
          if (broken) return `${broken} (after ${JSON.stringify(e)})`;
          const failed = s.failWaiters(c.service, c.key);
          const waiting = m.waiting.filter((w) => w.service === c.service && w.key === c.key);
          if (failed.length !== waiting.length || failed.some((w, i) => w !== waiting[i])) {
            return `failWaiters returned ${failed.length} waiters, ${waiting.length} were waiting (after ${JSON.stringify(e)})`;
          }
          for (const w of failed) m.waiting.splice(m.waiting.indexOf(w), 1);
          applied = true;
        }
      }
    } else if (e.kind === 'release') {
      const active = m.in('active');
      if (active.length === 0) continue;
      const c = active[e.pick % active.length];
      const blocked = m.capBlocked(budget, cap, c.service);
      c.state = 'idle';
      c.holder = undefined;
      actions = s.release(c.id, now, e.reusable);
      // At the cap, services take turns: while the cap keeps a service
      // waiting, each other service keeps at most one released connection
      // before one is closed for it.
      const kept = !actions.some((a) => a.kind === 'close' || a.kind === 'open');
      for (const name of blocked) {
        const keepers = passedOver.get(name)!;
        if (!kept) keepers.length = 0;
        else if (keepers.includes(c.service)) return `${name} waits at the cap while ${c.service} keeps released connections in turn after turn (after ${JSON.stringify(e)})`;
        else keepers.push(c.service);
      }
    } else if (e.kind === 'closed') {
      const closing = m.in('closing');
      if (closing.length === 0) continue;
      const c = closing[e.pick % closing.length];
      m.conns.delete(c.id);
      actions = s.closed(c.id, now);
    } else if (e.kind === 'dropped') {
      // The I/O layer closes a connection on its own (an error, shutdown).
      const live = [...m.conns.values()].filter((c) => c.state !== 'closing');
      if (live.length === 0) continue;
      const c = live[e.pick % live.length];
      c.state = 'closing';
      actions = s.closing(c.id, now);
    } else if (e.kind === 'cancel') {
      if (m.waiting.length === 0) continue;
      actions = s.cancel(m.waiting.splice(e.pick % m.waiting.length, 1)[0], now);
    } else if (e.kind === 'requeue') {
      // The connection a client was handed went bad before it got it: the
      // client goes back to its queue, the connection closes.
      const handed = m.in('active').filter((c) => c.holder);
      if (handed.length === 0) continue;
      const c = handed[e.pick % handed.length];
      s.requeue(c.holder!);
      // Back where its arrival puts it: after every waiter that came no later.
      const at = m.waiting.findIndex((w) => w.enqueuedAt > c.holder!.enqueuedAt);
      m.waiting.splice(at < 0 ? m.waiting.length : at, 0, c.holder!);
      c.holder = undefined;
      c.state = 'idle';
      actions = s.release(c.id, now, false);
    } else if (e.kind === 'tick') {
      now += e.ms;
      actions = s.sweep(now);
    } else if (e.kind === 'reload') {
      const name = SERVICES[e.service];
      configured.set(name, e.budget);
      if (e.enforce) dry.delete(name);
      else {
        dry.add(name);
        ceilings.delete(name); // coordination shares enforced budgets only
      }
      s.setService(name, limitsOf(name, e.enforce));
      actions = s.sweep(now);
    } else if (e.kind === 'ceiling') {
      const name = SERVICES[e.service];
      if (dry.has(name) || e.ceiling === null) ceilings.delete(name);
      else ceilings.set(name, e.ceiling);
      s.setService(name, limitsOf(name, !dry.has(name)));
      actions = s.sweep(now);
    } else {
      cap = e.cap;
      s.setPoolLimits(limits(cap));
      actions = s.sweep(now);
    }
    // A pinned service's connections close for the cap only to make room for a waiting service, never for a lower cap.
    for (const name of pinned) {
      const live = [...m.conns.values()].filter((c) => c.service === name && c.state !== 'closing').length;
      const cut = actions.filter((a) => a.kind === 'close' && a.reason === 'over_budget' && m.conns.get(a.connId)?.service === name).length;
      if (cut > 0 && live - cut < budget.get(name)! && !dry.has(name)) return `pinned ${name} lost ${cut} of ${live} connections to a lower cap (after ${JSON.stringify(e)})`;
    }
    const wrong = applied ? null : m.apply(actions);
    if (wrong) return `${wrong} (after ${JSON.stringify(e)})`;
    const stillBlocked = m.capBlocked(budget, cap, '');
    for (const [name, keepers] of passedOver) if (!stillBlocked.includes(name)) keepers.length = 0;
    const broken = invariants(s, m, budget, dry, pinned, cap, effect(actions, totalBefore, fastTo));
    if (broken) return `${broken} (after ${JSON.stringify(e)})`;
    // A sweep rejects every waiter past its timeout, wherever it is in its queue (a requeued one too).
    if (e.kind === 'tick') {
      const late = m.waiting.find((w) => now - w.enqueuedAt >= TIMEOUT_MS);
      if (late) return `${late.service} waiter ${late.id} waited ${now - late.enqueuedAt} ms, past the timeout of ${TIMEOUT_MS}, and the sweep kept it (after ${JSON.stringify(e)})`;
    }
  }
  return null;
}

t.test('random event sequences keep the budget, the cap, the counts and the queue honest', async (t) => {
  let failure: string | null = null;
  const budgets = fc.tuple(fc.integer({ min: 1, max: 4 }), fc.integer({ min: 1, max: 4 }), fc.integer({ min: 1, max: 4 }));
  // Each service's budget enforced or a dry run (enforce: false); a reload may switch it.
  const dryRun = fc.array(fc.boolean(), { minLength: 3, maxLength: 3 });
  const verdict = fc.check(
    fc.property(fc.array(event, { minLength: 1, maxLength: 200, size: 'max' }), budgets, dryRun, fc.boolean(), (events, b, d, p) => {
      failure = run(events, b, d, p);
      return failure === null;
    }),
    { numRuns: 2000 },
  );
  // The shrunk counterexample's own failure, in words.
  if (verdict.failed && verdict.counterexample) failure = run(...verdict.counterexample);
  t.equal(failure, null, verdict.failed ? `counterexample: ${JSON.stringify(verdict.counterexample)}` : `${verdict.numRuns} random sequences`);
});
