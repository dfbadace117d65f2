// The budget scheduler: who may hold a server connection, who waits, and who
// gets freed capacity. Pure and synchronous: no sockets, no timers; time is
// passed in and every decision comes back as a list of actions for the I/O
// layer to carry out. A server connection counts against its service's
// budget and against the global cap from the moment it is decided to open it
// until its socket has closed, so the cap holds even while connections are
// opening or closing.
//
// The state is lists: each connection is in the list of its service and
// state, each waiter in its service's queue, and every count is a list's
// length. A connection changes state only through move().
import { Fairness, type Capacity } from './fairness.js';
import type { WouldCounts } from './dryRun.js';
import { CONN_STATES, legal, ServiceState, type Conn, type ConnState, type ServiceCounts, type ServiceLimits, type Totals, type Waiter } from './service.js';

export type { ConnState, ServiceCounts, ServiceLimits, Waiter } from './service.js';

export interface PoolLimits {
  /** Most server connections of all services together. */
  cap: number;
  /** Idle server connections older than this (idle time) are closed. */
  idleTimeoutMs: number;
  /** Server connections older than this are closed when next idle. */
  lifetimeMs: number;
}

export type RejectReason = 'queue_full' | 'queue_timeout';

export type CloseReason = 'idle_timeout' | 'lifetime' | 'over_budget' | 'evicted' | 'not_reusable' | 'removed_service';

export type Action =
  | { kind: 'assign'; waiter: Waiter; connId: number; waitedMs: number }
  | { kind: 'open'; connId: number; service: string; key: string }
  | { kind: 'close'; connId: number; reason: CloseReason }
  | { kind: 'reject'; waiter: Waiter; reason: RejectReason; waitedMs: number; facts: ServiceCounts };

export class Scheduler {
  private readonly services = new Map<string, ServiceState>();
  private readonly fairness = new Fairness();
  private readonly conns = new Map<number, Conn>();
  /** Each state's count over all services, kept by the lists. */
  private readonly totals: Totals = { opening: { size: 0 }, active: { size: 0 }, idle: { size: 0 }, closing: { size: 0 }, waiting: { size: 0 } };
  private nextConnId = 1;
  private nextWaiterId = 1;
  /**
   * The time of the last acquire or dispatch (every event ends in one).
   * The hot path (takeIdleNow) takes none; a dry run's would-be queue dates
   * its clients by this, which is at most one sweep (50 ms) old.
   */
  private now = 0;
  /** No new server connection is opened before this time (upstream backoff). */
  private noOpenBefore = 0;
  private readonly capacity: Capacity<Action[]> = {
    full: () => this.full(),
    mayOpen: (now) => this.totalHeld < this.limits.cap && now >= this.noOpenBefore,
    closingTotal: () => this.totals.closing.size,
    open: (s, key, now, actions) => this.open(s, key, now, actions),
    evict: (conn, actions) => this.startClosing(conn, 'evicted', actions),
  };

  constructor(private limits: PoolLimits) {}

  // ---- configuration ----

  setPoolLimits(limits: PoolLimits): void {
    this.limits = limits;
  }

  /** Adds a service or changes its limits; takes effect for the next decision. */
  setService(name: string, limits: ServiceLimits): void {
    const s = this.services.get(name);
    if (s) {
      s.setLimits(limits);
      return;
    }
    const added = new ServiceState(name, limits, this.totals);
    this.services.set(name, added);
    this.fairness.add(added);
  }

  hasService(name: string): boolean {
    return this.services.has(name);
  }

  serviceNames(): string[] {
    return [...this.services.keys()];
  }

  /**
   * A service removed from the config, once its clients are gone: its idle
   * connections close, and when it holds none and nobody waits, it is
   * forgotten (returns true). Until then its budget stays as it was.
   */
  retire(name: string, now: number, actions: Action[]): boolean {
    const s = this.services.get(name);
    if (!s) return true;
    for (let c = s.idle.first(), next: Conn | null; c !== null; c = next) {
      next = s.idle.next(c);
      this.startClosing(c, 'removed_service', actions);
    }
    if (s.held > 0 || s.waiting.size > 0) return false;
    this.services.delete(name);
    this.fairness.remove(s);
    this.dispatch(now, actions);
    return true;
  }

  /** Upstream backoff: opening stays paused until `until`. */
  pauseOpening(until: number): void {
    this.noOpenBefore = Math.max(this.noOpenBefore, until);
  }

  // ---- events ----

  /**
   * A client needs a server connection. Returns its waiter (used to cancel)
   * and the actions; one of them may already assign the waiter. `request`
   * is the caller's own waiter object for `service` and `key`, if it makes one.
   */
  acquire(service: string, key: string, now: number, request?: Waiter): { waiter: Waiter; actions: Action[] } {
    const s = this.service(service);
    this.now = now;
    const waiter: Waiter = request ?? { id: 0, service, key, enqueuedAt: 0, qPrev: null, qNext: null, qList: null };
    waiter.id = this.nextWaiterId++;
    waiter.enqueuedAt = now;
    const actions: Action[] = [];
    if (s.waiting.size === 0) {
      const conn = this.takeIdle(s, key);
      if (conn) {
        actions.push({ kind: 'assign', waiter, connId: conn.id, waitedMs: 0 });
        return { waiter, actions };
      }
    }
    // A dry run's queue limit is the budget's, counted by the would-be queue;
    // its clients really queue only while a connection opens for them, or
    // for the cap, and only for the cap is the limit enforced.
    if (s.waiting.size >= s.limits.maxWaiting && (s.enforced || this.full())) {
      actions.push({ kind: 'reject', waiter, reason: 'queue_full', waitedMs: 0, facts: s.counts() });
      return { waiter, actions };
    }
    s.enqueue(waiter);
    this.dispatch(now, actions);
    return { waiter, actions };
  }

  /**
   * The hot path of acquire(): when nobody of the service waits and an idle
   * connection for the key exists, it becomes active and its id is returned;
   * otherwise 0 and nothing changes (call acquire()).
   */
  takeIdleNow(service: string, key: string): number {
    const s = this.service(service);
    if (s.waiting.size > 0) return 0;
    return this.takeIdle(s, key)?.id ?? 0;
  }

  /**
   * Puts a waiter back in its queue where its arrival puts it (the head,
   * unless waiters of another key came earlier), keeping its original wait
   * time (the connection it was given turned out to be unusable).
   */
  requeue(waiter: Waiter): void {
    this.service(waiter.service).enqueue(waiter, true);
  }

  /** A waiting client went away (disconnected); it leaves the queue at once. */
  cancel(waiter: Waiter, now: number): Action[] {
    const s = this.services.get(waiter.service);
    const actions: Action[] = [];
    if (s && s.dequeue(waiter)) this.dispatch(now, actions);
    return actions;
  }

  /** The server connection is open and logged in. */
  opened(connId: number, now: number): Action[] {
    const conn = this.conn(connId);
    if (conn.state !== 'opening') throw new Error(`opened: connection ${connId} is ${conn.state}`);
    this.move(conn, 'idle', now);
    const actions: Action[] = [];
    // Opened under a budget (or cap) that a reload has lowered since: it
    // closes instead of being handed out, as a released one would.
    if (conn.service.overBudget || this.overCapFor(conn.service)) this.startClosing(conn, 'over_budget', actions);
    this.dispatch(now, actions);
    return actions;
  }

  /**
   * A client is done with its server connection. `reusable` is false when
   * its state is unknown; such a connection is closed, never reused.
   */
  release(connId: number, now: number, reusable: boolean): Action[] {
    const conn = this.conn(connId);
    const s = conn.service;
    if (conn.state !== 'active') throw new Error(`release of connection ${connId} in state ${conn.state}`);
    const actions: Action[] = [];
    const reason: CloseReason | null = !reusable
      ? 'not_reusable'
      : s.overBudget || this.overCapFor(s)
        ? 'over_budget'
        : now - conn.createdAt >= this.limits.lifetimeMs
          ? 'lifetime'
          : null;
    if (reason) this.startClosing(conn, reason, actions);
    else if (this.full() && this.fairness.yields(s)) this.startClosing(conn, 'evicted', actions);
    else this.move(conn, 'idle', now);
    this.dispatch(now, actions);
    return actions;
  }

  /** The I/O layer decided to close a connection on its own (e.g. an idle one got an error). */
  closing(connId: number, now: number): Action[] {
    const conn = this.conns.get(connId);
    const actions: Action[] = [];
    if (!conn || conn.state === 'closing') return actions;
    this.move(conn, 'closing');
    this.dispatch(now, actions);
    return actions;
  }

  /** The connection's socket has closed (or never opened): its slot is free. */
  closed(connId: number, now: number): Action[] {
    const conn = this.conns.get(connId);
    const actions: Action[] = [];
    if (!conn) return actions;
    this.move(conn, 'closed');
    conn.service.noteHeld(now);
    this.dispatch(now, actions);
    return actions;
  }

  /**
   * Removes every waiter of one service and key (the server refused their
   * login for good, e.g. a wrong password) and returns them.
   */
  failWaiters(service: string, key: string): Waiter[] {
    const s = this.services.get(service);
    if (!s) return [];
    const failed: Waiter[] = [];
    for (let w = s.waiting.first(); w !== null; w = s.waiting.next(w)) if (w.key === key) failed.push(w);
    for (const w of failed) s.dequeue(w);
    return failed;
  }

  /** Periodic: queue timeouts, idle and lifetime expiry, and any opening that was paused. */
  sweep(now: number): Action[] {
    const actions: Action[] = [];
    for (const s of this.fairness.services) {
      s.noteHeld(now); // a budget a reload changed
      s.wouldBe?.sweep(now, s.limits.budget, s.limits.timeoutMs);
      for (let w = s.waiting.first(), next: Waiter | null; w !== null; w = next) {
        next = s.waiting.next(w);
        const waitedMs = now - w.enqueuedAt;
        if (waitedMs < s.limits.timeoutMs) break; // FIFO: the rest waited less
        s.dequeue(w);
        actions.push({ kind: 'reject', waiter: w, reason: 'queue_timeout', waitedMs, facts: s.counts() });
      }
      for (let c = s.idle.first(), next: Conn | null; c !== null; c = next) {
        next = s.idle.next(c);
        if (now - c.idleSince >= this.limits.idleTimeoutMs) this.startClosing(c, 'idle_timeout', actions);
        else if (now - c.createdAt >= this.limits.lifetimeMs) this.startClosing(c, 'lifetime', actions);
        else if (s.overBudget) this.startClosing(c, 'over_budget', actions);
      }
    }
    // A cap lowered by a reload: close idle connections, borrowed ones first, then oldest first.
    while (this.overCap()) {
      const oldest = this.fairness.evictable(true);
      if (!oldest) break;
      this.startClosing(oldest, 'over_budget', actions);
    }
    this.dispatch(now, actions);
    return actions;
  }

  // ---- reading ----

  counts(service: string): ServiceCounts {
    return this.service(service).counts();
  }

  /** How long the service has held its whole budget (held >= budget), in all, up to `now` (ms). */
  atBudgetMs(service: string, now: number): number {
    return this.service(service).atBudgetTotalMs(now);
  }

  /** What enforcing the service's budget would have done, since the start (dry run; all 0 for a service always enforced). */
  wouldCounts(service: string): WouldCounts {
    return this.service(service).would;
  }

  /** A dry run's would-be queue: how many and the oldest one's wait; null for an enforced budget. */
  wouldBeWaiting(service: string, now: number): { waiting: number; oldestWaitMs: number } | null {
    const w = this.service(service).wouldBe;
    return w === null ? null : { waiting: w.queue.size, oldestWaitMs: w.oldestWaitMs(now) };
  }

  /** Age of the service's oldest waiter, 0 when nobody waits. */
  oldestWaitMs(service: string, now: number): number {
    const first = this.service(service).waiting.first();
    return first === null ? 0 : now - first.enqueuedAt;
  }

  get totalHeld(): number {
    const t = this.totals;
    return t.opening.size + t.active.size + t.idle.size + t.closing.size;
  }

  connState(connId: number): ConnState | undefined {
    return this.conns.get(connId)?.state as ConnState | undefined;
  }

  isWaiting(waiter: Waiter): boolean {
    return this.services.get(waiter.service)?.waiting.has(waiter) ?? false;
  }

  /** Idle connection ids, for the I/O layer to close them all (shutdown). */
  idleConnIds(): number[] {
    const ids: number[] = [];
    for (const s of this.fairness.services) for (let c = s.idle.first(); c !== null; c = s.idle.next(c)) ids.push(c.id);
    return ids;
  }

  /**
   * What is inconsistent in the state, or null: every connection and waiter
   * in the one list its state and service say, every count (per service,
   * per key, over all services) equal to its lists. For tests; it walks
   * everything.
   */
  audit(): string | null {
    const services = this.fairness.services;
    if (services.length !== this.services.size || services.some((s) => this.services.get(s.name) !== s)) {
      return 'the turn order and the services by name differ';
    }
    if (this.fairness.turnIndex >= Math.max(services.length, 1)) return `the turn ${this.fairness.turnIndex} is past the services`;
    let held = 0;
    for (const s of services) {
      const wrong = s.audit((c) => this.conns.get(c.id) === c);
      if (wrong) return wrong;
      held += s.held;
    }
    for (const state of [...CONN_STATES, 'waiting'] as const) {
      const sum = services.reduce((n, s) => n + (state === 'waiting' ? s.waiting.size : s.list(state).size), 0);
      if (this.totals[state].size !== sum) return `${this.totals[state].size} ${state} in all, but the services' lists hold ${sum}`;
    }
    // Every listed connection is known by id (above); nothing else is.
    if (this.conns.size !== held) return `${this.conns.size} connections known by id, ${held} in lists`;
    return null;
  }

  // ---- internals ----

  /**
   * The one way a connection changes state: out of the list of its old
   * state, into the list of the new one. 'closed' leaves every list, and
   * the connection is forgotten. `now` matters only to a connection that
   * becomes idle: its idle time starts.
   */
  private move(conn: Conn, to: ConnState | 'closed', now = 0): void {
    const from = conn.state;
    if (!legal(from, to)) throw new Error(`server connection ${conn.id} cannot go from ${from} to ${to}`);
    const s = conn.service;
    if (from !== 'new') s.unlink(conn, from as ConnState);
    conn.state = to;
    if (to === 'closed') {
      this.conns.delete(conn.id);
      return;
    }
    if (from === 'new') this.conns.set(conn.id, conn);
    if (to === 'idle') conn.idleSince = now;
    s.link(conn, to, this.now);
  }

  private service(name: string): ServiceState {
    const s = this.services.get(name);
    if (!s) throw new Error(`unknown service ${name}`);
    return s;
  }

  private conn(id: number): Conn {
    const c = this.conns.get(id);
    if (!c) throw new Error(`unknown server connection ${id}`);
    return c;
  }

  /** No slot left under the cap. */
  private full(): boolean {
    return this.totalHeld >= this.limits.cap;
  }

  /** More connections than the cap, not counting those already closing. */
  private overCap(): boolean {
    return this.totalHeld - this.totals.closing.size > this.limits.cap;
  }

  /** Over the cap, for a connection of `s`: a pinned service's stay. */
  private overCapFor(s: ServiceState): boolean {
    return s.limits.pinned !== true && this.overCap();
  }

  private takeIdle(s: ServiceState, key: string): Conn | null {
    const c = s.idleOf(key);
    if (c) this.move(c, 'active');
    return c;
  }

  private open(s: ServiceState, key: string, now: number, actions: Action[]): void {
    const conn: Conn = { id: this.nextConnId++, service: s, key, state: 'new', createdAt: now, idleSince: now, seat: null, qPrev: null, qNext: null, qList: null };
    this.move(conn, 'opening');
    s.noteHeld(now);
    actions.push({ kind: 'open', connId: conn.id, service: s.name, key });
  }

  private startClosing(conn: Conn, reason: CloseReason, actions: Action[]): void {
    this.move(conn, 'closing');
    actions.push({ kind: 'close', connId: conn.id, reason });
  }

  private dispatch(now: number, actions: Action[]): void {
    this.now = now;
    // Nobody waits (the common case, once per transaction): nothing to hand out or open.
    if (this.totals.waiting.size === 0) {
      this.fairness.dropReservations();
      return;
    }
    // Idle connections go to waiters of their own service and key, in queue order.
    for (const s of this.fairness.services) {
      if (s.waiting.size === 0 || !this.anyIdleWanted(s)) continue;
      for (let w = s.waiting.first(), next: Waiter | null; w !== null; w = next) {
        next = s.waiting.next(w);
        const conn = this.takeIdle(s, w.key);
        if (!conn) continue;
        s.dequeue(w);
        actions.push({ kind: 'assign', waiter: w, connId: conn.id, waitedMs: now - w.enqueuedAt });
        if (s.idle.size === 0) break;
      }
    }
    this.fairness.share(this.capacity, now, actions);
  }

  /** Some idle connection fits some waiter: else walking a long queue would find nothing. */
  private anyIdleWanted(s: ServiceState): boolean {
    for (let c = s.idle.first(); c !== null; c = s.idle.next(c)) if (s.wants(c.key)) return true;
    return false;
  }
}
