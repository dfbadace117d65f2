// One service's part of the scheduler's state: its server connections in one
// list per state, its waiters in one FIFO list, and its demand per key. Its
// counts are the lengths of its lists. Pure: no sockets, no handlers.
import { List, type Linked, type Tally } from './lists.js';
import { SEATED, WouldBe, wouldCounts, type Seat, type WouldCounts } from './dryRun.js';

export interface ServiceLimits {
  /** Most server connections the service may hold (opening, active, idle or closing). */
  budget: number;
  /** Most clients waiting in the service's queue. */
  maxWaiting: number;
  /** How long a client may wait before it is rejected. */
  timeoutMs: number;
  /**
   * false: a dry run, the budget is not enforced (the cap still is) and
   * what enforcing it would have done is counted (dryRun.ts). Beyond its
   * budget the service only borrows the cap: it opens a connection when no
   * service within its budget can use the slot, and gives it back first.
   */
  enforce?: boolean;
  /**
   * The most this process may hold now when it shares the budget with other
   * pgbudget instances (coordination): its fair share, or what the cluster
   * has room for. Below `budget`, it gates opening and keeping connections
   * as a lowered budget would; `budget` stays what clients are told.
   */
  ceiling?: number;
  /**
   * Its connections are not closed because the cap fell below what is held
   * (they still count under it, and still make room, in turn, for services
   * the cap keeps waiting). For the headroom reading: it is how an auto cap
   * learns that it may rise again, so it must not wait for a client's
   * transaction to end.
   */
  pinned?: boolean;
}

/**
 * A request for a server connection, as the scheduler sees it. The caller
 * may make the object itself, with fields of its own (how to answer the
 * client); the scheduler sets `id` and `enqueuedAt` and links it into its
 * queue, and reads nothing else.
 */
export interface Waiter extends Linked {
  id: number;
  readonly service: string;
  /** Which server connections can serve it: same user and database. */
  readonly key: string;
  enqueuedAt: number;
}

export type ConnState = 'opening' | 'active' | 'idle' | 'closing';

export const CONN_STATES: readonly ConnState[] = ['opening', 'active', 'idle', 'closing'];

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

/** A server connection as the scheduler sees it. */
export interface Conn extends Linked {
  readonly id: number;
  readonly service: ServiceState;
  readonly key: string;
  /** The list it is in; 'new' before its first, 'closed' after its last. */
  state: ConnState | 'new' | 'closed';
  readonly createdAt: number;
  idleSince: number;
  /** Dry run only: the seat its client holds while it is active (dryRun.ts). */
  seat: Seat;
}

/**
 * Whether a connection may go from one state to another: opened, then idle
 * and active in turn, then closing (or closed at once, its socket gone).
 * 'new' and 'closed' are outside every list.
 */
export function legal(from: Conn['state'], to: ConnState | 'closed'): boolean {
  switch (to) {
    case 'opening':
      return from === 'new';
    case 'idle':
      return from === 'opening' || from === 'active';
    case 'active':
      return from === 'idle';
    case 'closing':
      return from === 'opening' || from === 'idle' || from === 'active';
    case 'closed':
      return from !== 'new' && from !== 'closed';
  }
}

/** One state's count over all services, kept by the services' lists. */
export type Totals = Record<ConnState | 'waiting', Tally>;

function bump(m: Map<string, number>, key: string, by: number): void {
  const n = (m.get(key) ?? 0) + by;
  if (n === 0) m.delete(key);
  else m.set(key, n);
}

export class ServiceState {
  readonly opening: List<Conn>;
  readonly active: List<Conn>;
  /** Most recently used last (reused first, so the others can time out). */
  readonly idle: List<Conn>;
  readonly closing: List<Conn>;
  /** First in, first out; a waiter put back goes to the head. */
  readonly waiting: List<Waiter>;
  /** Slots promised to this service by connections of others that are closing for it. */
  reserved = 0;
  /** Since when the service has held its whole budget (ms), or -1 while it has room (see noteHeld). */
  private atBudgetSince = -1;
  /** Time at budget in periods that have ended (ms). */
  private atBudgetMs = 0;
  /**
   * Waiters and opening connections per key, so unmet demand is counted
   * without walking the queue. Changed only where those lists change
   * (enqueue/dequeue, link/unlink); audit() recounts them.
   */
  private readonly waitingByKey = new Map<string, number>();
  private readonly openingByKey = new Map<string, number>();
  /** What enforcing the budget would have done; kept when the service changes between dry run and enforced. */
  readonly would: WouldCounts = wouldCounts();
  /** The seats and would-be queue while the budget is a dry run (enforce: false), else null. */
  wouldBe: WouldBe | null = null;

  constructor(
    readonly name: string,
    public limits: ServiceLimits,
    totals: Totals,
  ) {
    this.opening = new List(totals.opening);
    this.active = new List(totals.active);
    this.idle = new List(totals.idle);
    this.closing = new List(totals.closing);
    this.waiting = new List(totals.waiting);
    this.setLimits(limits);
  }

  /** New limits (a reload). A dry run that starts counts seats from the clients that start after it. */
  setLimits(limits: ServiceLimits): void {
    this.limits = limits;
    const dry = limits.enforce === false;
    if (dry && this.wouldBe === null) this.wouldBe = new WouldBe(this.would);
    else if (dry) this.wouldBe!.seatWaiters(limits.budget);
    else if (!dry && this.wouldBe !== null) {
      for (let c = this.active.first(); c !== null; c = this.active.next(c)) c.seat = null;
      this.wouldBe = null;
    }
  }

  /** The most it may hold: its budget, or less while other instances share it (coordination). */
  get allowed(): number {
    const c = this.limits.ceiling;
    return c === undefined || c > this.limits.budget ? this.limits.budget : c;
  }

  /** The budget is enforced: not a dry run. */
  get enforced(): boolean {
    return this.limits.enforce !== false;
  }

  /** A dry run holding more than its budget: it borrows from the cap, and its idle connections go first. */
  get borrowing(): boolean {
    return this.limits.enforce === false && this.held > this.limits.budget;
  }

  list(state: ConnState): List<Conn> {
    switch (state) {
      case 'opening':
        return this.opening;
      case 'active':
        return this.active;
      case 'idle':
        return this.idle;
      case 'closing':
        return this.closing;
    }
  }

  /** Server connections held in any state; what the budget limits. */
  get held(): number {
    return this.opening.size + this.active.size + this.idle.size + this.closing.size;
  }

  /**
   * Its held count or budget may have changed at `now`: at budget (held >=
   * budget, no room to open another connection) starts or ends here. The
   * scheduler calls it where a connection starts to count (open) and stops
   * (closed), so those are exact; a budget changed by a reload is noticed
   * at the next sweep (50 ms).
   */
  noteHeld(now: number): void {
    const full = this.held >= this.allowed;
    if (full && this.atBudgetSince < 0) this.atBudgetSince = now;
    else if (!full && this.atBudgetSince >= 0) {
      this.atBudgetMs += Math.max(0, now - this.atBudgetSince);
      this.atBudgetSince = -1;
    }
  }

  /** Total time at budget up to `now` (ms), the period under way included. */
  atBudgetTotalMs(now: number): number {
    return this.atBudgetMs + (this.atBudgetSince >= 0 ? Math.max(0, now - this.atBudgetSince) : 0);
  }

  /** Holds more than its enforced budget, not counting connections already closing (a reload lowered it). */
  get overBudget(): boolean {
    return this.held - this.closing.size > this.allowed && this.limits.enforce !== false;
  }

  /** Only for the scheduler's transition function: puts `conn` in the list of `state`. */
  link(conn: Conn, state: ConnState, now: number): void {
    this.list(state).push(conn);
    if (state === 'opening') bump(this.openingByKey, conn.key, 1);
    else if (state === 'active' && this.wouldBe !== null) this.wouldBe.start(conn, now, this.limits.budget, this.limits.maxWaiting);
  }

  /** Only for the scheduler's transition function: takes `conn` out of its list. */
  unlink(conn: Conn, state: ConnState): void {
    conn.qList!.delete(conn);
    if (state === 'opening') bump(this.openingByKey, conn.key, -1);
    else if (state === 'active' && conn.seat !== null) this.wouldBe?.stop(conn, this.limits.budget);
  }

  enqueue(w: Waiter, requeued = false): void {
    if (this.waiting.has(w)) return;
    if (requeued) {
      // Back in its place by when it first came: the queue stays in arrival order, which is what the
      // timeout sweep (it stops at the first waiter not yet due) and oldestWaitMs rely on. Waiters of
      // other keys may have been served after it came, so that place is not always the head.
      let before = this.waiting.first();
      while (before !== null && before.enqueuedAt <= w.enqueuedAt) before = this.waiting.next(before);
      this.waiting.insertBefore(w, before);
    } else this.waiting.push(w);
    bump(this.waitingByKey, w.key, 1);
  }

  /** False when `w` was not waiting here. */
  dequeue(w: Waiter): boolean {
    if (!this.waiting.delete(w)) return false;
    bump(this.waitingByKey, w.key, -1);
    return true;
  }

  /** Whether some waiter can use an idle connection of this key. */
  wants(key: string): boolean {
    return this.waitingByKey.has(key);
  }

  /** The newest idle connection of the key, or null. */
  idleOf(key: string): Conn | null {
    for (let c = this.idle.last(); c !== null; c = this.idle.prev(c)) if (c.key === key) return c;
    return null;
  }

  /** How many waiters of the key no opening connection is meant for (may be ≤ 0). */
  unmetCount(key: string): number {
    return (this.waitingByKey.get(key) ?? 0) - (this.openingByKey.get(key) ?? 0);
  }

  /** First key, in queue order, whose waiters outnumber the connections opening for it; null when none. */
  unmetKey(): string | null {
    const first = this.waiting.first();
    if (first === null) return null;
    if (this.waitingByKey.size === 1) return this.unmetCount(first.key) > 0 ? first.key : null;
    const seen = new Set<string>();
    for (let w: Waiter | null = first; w !== null; w = this.waiting.next(w)) {
      if (seen.has(w.key)) continue;
      seen.add(w.key);
      if (this.unmetCount(w.key) > 0) return w.key;
      if (seen.size === this.waitingByKey.size) break;
    }
    return null;
  }

  counts(): ServiceCounts {
    return {
      service: this.name,
      budget: this.limits.budget,
      held: this.held,
      active: this.active.size,
      idle: this.idle.size,
      opening: this.opening.size,
      closing: this.closing.size,
      waiting: this.waiting.size,
    };
  }

  /**
   * What is inconsistent in this service's lists, or null: every connection
   * in the list of its state and of this service, every count equal to its
   * list, the per-key demand equal to a recount. For tests; O(held + waiting).
   */
  audit(isRegistered: (c: Conn) => boolean): string | null {
    const opening = new Map<string, number>();
    for (const state of CONN_STATES) {
      const wrong = this.list(state).audit((c) => {
        if (c.state !== state) return `connection ${c.id} in the ${state} list has state ${c.state}`;
        if (c.service !== this) return `connection ${c.id} of ${c.service.name} is in a list of ${this.name}`;
        if (!isRegistered(c)) return `connection ${c.id} is listed but not known by id`;
        if (state === 'opening') bump(opening, c.key, 1);
        return null;
      });
      if (wrong) return `${this.name}.${state}: ${wrong}`;
    }
    const waiting = new Map<string, number>();
    const wrong = this.waiting.audit((w) => {
      if (w.service !== this.name) return `waiter ${w.id} of ${w.service} waits here`;
      bump(waiting, w.key, 1);
      return null;
    });
    if (wrong) return `${this.name}.waiting: ${wrong}`;
    if (!sameCounts(waiting, this.waitingByKey)) return `${this.name}: waiters per key do not match the queue`;
    if (!sameCounts(opening, this.openingByKey)) return `${this.name}: opening per key does not match the opening list`;
    if (this.reserved < 0) return `${this.name}: ${this.reserved} slots reserved`;
    return this.auditSeats();
  }

  /** Dry run: the seats and the would-be queue are exactly the active connections that hold them. */
  private auditSeats(): string | null {
    const wb = this.wouldBe;
    let seated = 0;
    let queued = 0;
    for (let c = this.active.first(); c !== null; c = this.active.next(c)) {
      if (c.seat === null) continue;
      if (wb === null) return `${this.name}: connection ${c.seat === SEATED ? 'seated' : 'queued'} without a dry run`;
      if (c.seat === SEATED) seated++;
      else if (!wb.queue.has(c.seat) || c.seat.holder !== c) return `${this.name}: connection ${c.id} queued outside the would-be queue`;
      else queued++;
    }
    if (wb === null) return null;
    if (seated !== wb.seated) return `${this.name}: ${wb.seated} seats counted, ${seated} held`;
    if (queued !== wb.queue.size) return `${this.name}: ${wb.queue.size} in the would-be queue, ${queued} active connections in it`;
    if (queued > 0 && seated < this.limits.budget) return `${this.name}: a seat is free with ${queued} in the would-be queue`;
    return null;
  }
}

function sameCounts(a: Map<string, number>, b: Map<string, number>): boolean {
  if (a.size !== b.size) return false;
  for (const [k, n] of a) if (b.get(k) !== n) return false;
  return true;
}
