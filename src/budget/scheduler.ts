// The budget scheduler: who may hold a server connection, who waits, and who
// gets freed capacity. Pure and synchronous: no sockets, no timers; time is
// passed in and every decision comes back as a list of actions for the I/O
// layer to carry out. A server connection counts against its service's
// budget and against the global cap from the moment it is decided to open it
// until its socket has closed, so the cap holds even while connections are
// opening or closing.
import { List, type Linked } from './lists.js';

export interface ServiceLimits {
  /** Most server connections the service may hold (opening, active, idle or closing). */
  budget: number;
  /** Most clients waiting in the service's queue. */
  maxWaiting: number;
  /** How long a client may wait before it is rejected. */
  timeoutMs: number;
}

export interface PoolLimits {
  /** Most server connections of all services together. */
  cap: number;
  /** Idle server connections older than this (idle time) are closed. */
  idleTimeoutMs: number;
  /** Server connections older than this are closed when next idle. */
  lifetimeMs: number;
}

export interface Waiter extends Linked {
  readonly id: number;
  readonly service: string;
  /** Which server connections can serve it: same user and database. */
  readonly key: string;
  readonly enqueuedAt: number;
}

export type ConnState = 'opening' | 'active' | 'idle' | 'closing';

export type RejectReason = 'queue_full' | 'queue_timeout';

export type CloseReason = 'idle_timeout' | 'lifetime' | 'over_budget' | 'evicted' | 'not_reusable' | 'removed_service';

export type Action =
  | { kind: 'assign'; waiter: Waiter; connId: number; waitedMs: number }
  | { kind: 'open'; connId: number; service: string; key: string }
  | { kind: 'close'; connId: number; reason: CloseReason }
  | { kind: 'reject'; waiter: Waiter; reason: RejectReason; waitedMs: number; facts: ServiceCounts };

export interface ServiceCounts {
  service: string;
  budget: number;
  /** Server connections held: opening + active + idle + closing. */
  held: number;
  active: number;
  idle: number;
  opening: number;
  closing: number;
  waiting: number;
}

interface Conn {
  id: number;
  service: string;
  key: string;
  state: ConnState;
  createdAt: number;
  idleSince: number;
}

interface ServiceState {
  name: string;
  limits: ServiceLimits;
  /** FIFO, with O(1) removal of a waiter who leaves. */
  waiters: List<Waiter>;
  /** Idle connections, most recently used last (reused first, so the others can time out). */
  idle: Conn[];
  held: number;
  active: number;
  opening: number;
  closing: number;
  /** Slots promised to this service by connections of others that are closing for it. */
  reserved: number;
  /** Waiters and opening connections per key, so unmet demand is counted without scans. */
  waitingByKey: Map<string, number>;
  openingByKey: Map<string, number>;
}

function bump(m: Map<string, number>, key: string, by: number): void {
  const n = (m.get(key) ?? 0) + by;
  if (n === 0) m.delete(key);
  else m.set(key, n);
}

export class Scheduler {
  private readonly services = new Map<string, ServiceState>();
  private readonly conns = new Map<number, Conn>();
  private total = 0;
  private nextConnId = 1;
  private nextWaiterId = 1;
  /** Round-robin position among services, for handing out freed capacity fairly. */
  private turn = 0;
  /** No new server connection is opened before this time (upstream backoff). */
  private noOpenBefore = 0;

  constructor(private limits: PoolLimits) {}

  // ---- configuration ----

  setPoolLimits(limits: PoolLimits): void {
    this.limits = limits;
  }

  /** Adds a service or changes its limits; takes effect for the next decision. */
  setService(name: string, limits: ServiceLimits): void {
    const s = this.services.get(name);
    if (s) s.limits = limits;
    else
      this.services.set(name, {
        name,
        limits,
        waiters: new List(),
        idle: [],
        held: 0,
        active: 0,
        opening: 0,
        closing: 0,
        reserved: 0,
        waitingByKey: new Map(),
        openingByKey: new Map(),
      });
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
    for (const conn of [...s.idle]) this.startClosing(s, conn, 'removed_service', actions);
    if (s.held > 0 || s.waiters.size > 0) return false;
    this.services.delete(name);
    if (this.turn >= this.services.size) this.turn = 0;
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
   * and the actions; one of them may already assign the waiter.
   */
  acquire(service: string, key: string, now: number): { waiter: Waiter; actions: Action[] } {
    const s = this.service(service);
    const waiter: Waiter = { id: this.nextWaiterId++, service, key, enqueuedAt: now, qPrev: null, qNext: null, qList: null };
    const actions: Action[] = [];
    if (s.waiters.size === 0) {
      const conn = this.takeIdle(s, key);
      if (conn) {
        actions.push({ kind: 'assign', waiter, connId: conn.id, waitedMs: 0 });
        return { waiter, actions };
      }
    }
    if (s.waiters.size >= s.limits.maxWaiting) {
      actions.push({ kind: 'reject', waiter, reason: 'queue_full', waitedMs: 0, facts: this.counts(s) });
      return { waiter, actions };
    }
    this.enqueue(s, waiter);
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
    if (s.waiters.size > 0) return 0;
    return this.takeIdle(s, key)?.id ?? 0;
  }

  /**
   * Puts a waiter back at the head of its queue, keeping its original wait
   * time (the connection it was given turned out to be unusable).
   */
  requeue(waiter: Waiter): void {
    const s = this.service(waiter.service);
    if (s.waiters.has(waiter)) return;
    s.waiters.unshift(waiter);
    bump(s.waitingByKey, waiter.key, 1);
  }

  /** A waiting client went away (disconnected); it leaves the queue at once. */
  cancel(waiter: Waiter, now: number): Action[] {
    const s = this.services.get(waiter.service);
    const actions: Action[] = [];
    if (s && this.dequeue(s, waiter)) this.dispatch(now, actions);
    return actions;
  }

  /** The server connection is open and logged in. */
  opened(connId: number, now: number): Action[] {
    const conn = this.conn(connId);
    const s = this.service(conn.service);
    s.opening--;
    bump(s.openingByKey, conn.key, -1);
    conn.state = 'idle';
    conn.idleSince = now;
    s.idle.push(conn);
    const actions: Action[] = [];
    // Opened under a budget (or cap) that a reload has lowered since: it
    // closes instead of being handed out, as a released one would.
    if (this.overBudget(s) || this.overCap()) this.startClosing(s, conn, 'over_budget', actions);
    this.dispatch(now, actions);
    return actions;
  }

  /**
   * A client is done with its server connection. `reusable` is false when
   * its state is unknown; such a connection is closed, never reused.
   */
  release(connId: number, now: number, reusable: boolean): Action[] {
    const conn = this.conn(connId);
    const s = this.service(conn.service);
    if (conn.state !== 'active') throw new Error(`release of connection ${connId} in state ${conn.state}`);
    s.active--;
    const actions: Action[] = [];
    const reason: CloseReason | null = !reusable
      ? 'not_reusable'
      : this.overBudget(s) || this.overCap()
        ? 'over_budget'
        : now - conn.createdAt >= this.limits.lifetimeMs
          ? 'lifetime'
          : null;
    if (reason) {
      this.startClosing(s, conn, reason, actions);
    } else if (this.shouldYieldSlot(s)) {
      this.startClosing(s, conn, 'evicted', actions);
    } else {
      conn.state = 'idle';
      conn.idleSince = now;
      s.idle.push(conn);
    }
    this.dispatch(now, actions);
    return actions;
  }

  /** The I/O layer decided to close a connection on its own (e.g. an idle one got an error). */
  closing(connId: number, now: number): Action[] {
    const conn = this.conns.get(connId);
    const actions: Action[] = [];
    if (!conn || conn.state === 'closing') return actions;
    const s = this.service(conn.service);
    if (conn.state === 'idle') s.idle.splice(s.idle.indexOf(conn), 1);
    else if (conn.state === 'active') s.active--;
    else if (conn.state === 'opening') {
      s.opening--;
      bump(s.openingByKey, conn.key, -1);
    }
    conn.state = 'closing';
    s.closing++;
    this.dispatch(now, actions);
    return actions;
  }

  /** The connection's socket has closed (or never opened): its slot is free. */
  closed(connId: number, now: number): Action[] {
    const conn = this.conns.get(connId);
    const actions: Action[] = [];
    if (!conn) return actions;
    const s = this.service(conn.service);
    switch (conn.state) {
      case 'opening':
        s.opening--;
        bump(s.openingByKey, conn.key, -1);
        break;
      case 'active':
        s.active--;
        break;
      case 'idle':
        s.idle.splice(s.idle.indexOf(conn), 1);
        break;
      case 'closing':
        s.closing--;
        break;
    }
    this.conns.delete(connId);
    s.held--;
    this.total--;
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
    for (const w of s.waiters.values()) if (w.key === key) failed.push(w);
    for (const w of failed) this.dequeue(s, w);
    return failed;
  }

  /** Periodic: queue timeouts, idle and lifetime expiry, and any opening that was paused. */
  sweep(now: number): Action[] {
    const actions: Action[] = [];
    for (const s of this.services.values()) {
      for (const w of s.waiters.values()) {
        const waitedMs = now - w.enqueuedAt;
        if (waitedMs < s.limits.timeoutMs) break; // FIFO: the rest waited less
        this.dequeue(s, w);
        actions.push({ kind: 'reject', waiter: w, reason: 'queue_timeout', waitedMs, facts: this.counts(s) });
      }
      for (const conn of [...s.idle]) {
        if (now - conn.idleSince >= this.limits.idleTimeoutMs) this.startClosing(s, conn, 'idle_timeout', actions);
        else if (now - conn.createdAt >= this.limits.lifetimeMs) this.startClosing(s, conn, 'lifetime', actions);
        else if (this.overBudget(s)) this.startClosing(s, conn, 'over_budget', actions);
      }
    }
    // A cap lowered by a reload: close idle connections, oldest first.
    while (this.overCap()) {
      const oldest = this.oldestIdle();
      if (!oldest) break;
      this.startClosing(oldest.s, oldest.c, 'over_budget', actions);
    }
    this.dispatch(now, actions);
    return actions;
  }

  // ---- reading ----

  counts(s: ServiceState | string): ServiceCounts {
    const st = typeof s === 'string' ? this.service(s) : s;
    return {
      service: st.name,
      budget: st.limits.budget,
      held: st.held,
      active: st.active,
      idle: st.idle.length,
      opening: st.opening,
      closing: st.closing,
      waiting: st.waiters.size,
    };
  }

  /** Age of the service's oldest waiter, 0 when nobody waits. */
  oldestWaitMs(service: string, now: number): number {
    const first = this.service(service).waiters.first();
    return first === null ? 0 : now - first.enqueuedAt;
  }

  get totalHeld(): number {
    return this.total;
  }

  connState(connId: number): ConnState | undefined {
    return this.conns.get(connId)?.state;
  }

  isWaiting(waiter: Waiter): boolean {
    return this.services.get(waiter.service)?.waiters.has(waiter) ?? false;
  }

  /** Idle connection ids, for the I/O layer to close them all (shutdown). */
  idleConnIds(): number[] {
    const ids: number[] = [];
    for (const s of this.services.values()) for (const c of s.idle) ids.push(c.id);
    return ids;
  }

  // ---- internals ----

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

  /** More connections than the cap, not counting those already closing. */
  /** Holds more than its budget, not counting connections already closing (a reload lowered it). */
  private overBudget(s: ServiceState): boolean {
    return s.held - s.closing > s.limits.budget;
  }

  private overCap(): boolean {
    let closing = 0;
    for (const s of this.services.values()) closing += s.closing;
    return this.total - closing > this.limits.cap;
  }

  private oldestIdle(): { s: ServiceState; c: Conn } | null {
    let oldest: { s: ServiceState; c: Conn } | null = null;
    for (const s of this.services.values())
      for (const c of s.idle) if (!oldest || c.idleSince < oldest.c.idleSince) oldest = { s, c };
    return oldest;
  }

  private takeIdle(s: ServiceState, key: string): Conn | undefined {
    for (let i = s.idle.length - 1; i >= 0; i--) {
      const c = s.idle[i];
      if (c.key === key) {
        if (i === s.idle.length - 1) s.idle.pop();
        else s.idle.splice(i, 1);
        c.state = 'active';
        s.active++;
        return c;
      }
    }
    return undefined;
  }

  private startClosing(s: ServiceState, conn: Conn, reason: CloseReason, actions: Action[]): void {
    if (conn.state === 'idle') s.idle.splice(s.idle.indexOf(conn), 1);
    conn.state = 'closing';
    s.closing++;
    actions.push({ kind: 'close', connId: conn.id, reason });
  }

  /** First key, in queue order, whose waiters outnumber the connections opening for it. */
  private unmet(s: ServiceState): { key: string; count: number } | null {
    if (s.waiters.size === 0) return null;
    if (s.waitingByKey.size === 1) {
      const [key, waiting] = s.waitingByKey.entries().next().value!;
      const n = waiting - (s.openingByKey.get(key) ?? 0);
      return n > 0 ? { key, count: n } : null;
    }
    const seen = new Set<string>();
    for (const w of s.waiters.values()) {
      if (seen.has(w.key)) continue;
      seen.add(w.key);
      const n = s.waitingByKey.get(w.key)! - (s.openingByKey.get(w.key) ?? 0);
      if (n > 0) return { key: w.key, count: n };
      if (seen.size === s.waitingByKey.size) break;
    }
    return null;
  }

  private enqueue(s: ServiceState, w: Waiter): void {
    s.waiters.push(w);
    bump(s.waitingByKey, w.key, 1);
  }

  private dequeue(s: ServiceState, w: Waiter): boolean {
    if (!s.waiters.delete(w)) return false;
    bump(s.waitingByKey, w.key, -1);
    return true;
  }

  /** Under budget but blocked by the cap, with waiters still unmet. */
  private capBlocked(s: ServiceState): boolean {
    return s.held < s.limits.budget && this.unmet(s) !== null;
  }

  /**
   * When the cap is full and other services wait for capacity, a released
   * connection is closed rather than kept whenever it is another service's
   * turn, so one busy service cannot keep every slot under the cap.
   */
  private shouldYieldSlot(s: ServiceState): boolean {
    if (this.total < this.limits.cap) return false;
    const order = this.rotation();
    const candidates = order.filter((o) =>
      o === s ? o.waiters.size > 0 : this.capBlocked(o) && o.reserved < (this.unmet(o)?.count ?? 0),
    );
    if (candidates.length === 0 || candidates[0] === s) {
      if (candidates[0] === s) this.advanceTurn(s);
      return false;
    }
    const next = candidates[0];
    next.reserved++;
    this.advanceTurn(next);
    return true;
  }

  private anyCanGrow(): boolean {
    for (const s of this.services.values()) {
      if (s.waiters.size > 0 && (s.held < s.limits.budget || s.idle.length > 0)) return true;
    }
    return false;
  }

  private rotation(): ServiceState[] {
    const all = [...this.services.values()];
    if (all.length === 0) return all;
    const start = this.turn % all.length;
    return [...all.slice(start), ...all.slice(0, start)];
  }

  private advanceTurn(s: ServiceState): void {
    const all = [...this.services.values()];
    this.turn = (all.indexOf(s) + 1) % Math.max(all.length, 1);
  }

  private dispatch(now: number, actions: Action[]): void {
    // Nobody waits (the common case, once per transaction): nothing to hand out or open.
    let anyWaiting = false;
    for (const s of this.services.values()) {
      if (s.waiters.size > 0) {
        anyWaiting = true;
        break;
      }
    }
    if (!anyWaiting) {
      for (const s of this.services.values()) s.reserved = 0;
      return;
    }
    // 1. Idle connections go to waiters of their own service and key, in queue order.
    for (const s of this.services.values()) {
      if (s.waiters.size === 0 || s.idle.length === 0) continue;
      // No scan of a long queue when no idle connection fits any waiter.
      if (!s.idle.some((c) => s.waitingByKey.has(c.key))) continue;
      for (let w = s.waiters.first(), next: Waiter | null; w !== null; w = next) {
        next = s.waiters.next(w);
        const conn = this.takeIdle(s, w.key);
        if (!conn) continue;
        this.dequeue(s, w);
        actions.push({ kind: 'assign', waiter: w, connId: conn.id, waitedMs: now - w.enqueuedAt });
        if (s.idle.length === 0) break;
      }
    }
    // 2. Open new connections within budget and cap: services holding a
    // reservation first, then round-robin among the rest. Skipped when no
    // service with waiters is under budget or has an idle connection to
    // evict (every queued hand-off at saturation): only reservations of
    // services with nothing unmet are dropped, as the loop would.
    let progress = this.anyCanGrow();
    if (!progress) for (const s of this.services.values()) if (!this.unmet(s)) s.reserved = 0;
    while (progress) {
      progress = false;
      const order = this.rotation().sort((a, b) => Number(b.reserved > 0) - Number(a.reserved > 0));
      for (const s of order) {
        const unmet = this.unmet(s);
        if (!unmet) {
          s.reserved = 0;
          continue;
        }
        if (s.held >= s.limits.budget) {
          // At budget: an idle connection of another key is the only way to a slot.
          if (s.idle.length > 0 && s.closing < unmet.count) {
            this.startClosing(s, s.idle[0], 'evicted', actions);
          }
          continue;
        }
        if (this.total >= this.limits.cap || now < this.noOpenBefore) continue;
        const conn: Conn = {
          id: this.nextConnId++,
          service: s.name,
          key: unmet.key,
          state: 'opening',
          createdAt: now,
          idleSince: now,
        };
        this.conns.set(conn.id, conn);
        s.held++;
        s.opening++;
        bump(s.openingByKey, unmet.key, 1);
        this.total++;
        if (s.reserved > 0) s.reserved--;
        actions.push({ kind: 'open', connId: conn.id, service: s.name, key: unmet.key });
        this.advanceTurn(s);
        progress = true;
        break;
      }
    }
    // 3. The cap is full and someone under budget still waits: evict idle
    // connections (oldest first) that no waiter of their own service can use.
    if (this.total >= this.limits.cap) {
      let wanted = 0;
      for (const s of this.services.values()) if (this.capBlocked(s)) wanted += this.unmet(s)!.count;
      let closing = 0;
      for (const s of this.services.values()) closing += s.closing;
      wanted -= closing;
      while (wanted > 0) {
        const oldest = this.oldestIdle();
        if (!oldest) break;
        this.startClosing(oldest.s, oldest.c, 'evicted', actions);
        wanted--;
      }
    }
  }
}
