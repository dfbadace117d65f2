// Dry-run budgets (a service with `enforce: false`): the budget is not
// enforced, but what enforcement would have done is counted. Pure: the
// scheduler tells it when one of the service's server connections starts
// and stops serving a client, and passes the time in.
//
// The model: the budget is a number of seats. A connection that starts
// serving a client takes a free seat; with none free, its client is one an
// enforced budget would have made wait (`would_wait`), and it joins a
// would-be queue, unless that queue already holds `maxWaiting`, where an
// enforced budget would have refused it (`would_reject{queue_full}`). A seat
// that frees goes to the head of the would-be queue; a client still in that
// queue after `timeoutMs` is one an enforced budget would have timed out
// (`would_reject{queue_timeout}`) and leaves it. A client that finishes
// while in the would-be queue (it ran on a connection beyond the budget)
// simply leaves it. Idle connections are not seats: with an enforced budget
// they would have been reused.
import { List, type Linked } from './lists.js';

export type WouldRejectReason = 'queue_full' | 'queue_timeout';

export const WOULD_REJECT_REASONS: readonly WouldRejectReason[] = ['queue_full', 'queue_timeout'];

/** What enforcement would have done, since the start; kept across reloads (they are Prometheus counters). */
export interface WouldCounts {
  wouldWait: number;
  wouldReject: Record<WouldRejectReason, number>;
}

/** A client in the would-be queue: it runs on a connection beyond the budget. */
export interface WouldWaiter extends Linked {
  enqueuedAt: number;
  /** Where the seat goes when it is this waiter's turn: the connection serving the client. */
  holder: SeatHolder;
}

/** What the scheduler's connection carries: its seat, its place in the would-be queue, or nothing. */
export interface SeatHolder {
  seat: Seat;
}

/** SEATED: within the budget; a WouldWaiter: beyond it, in the would-be queue; null: not counted (refused, timed out, or never seen). */
export type Seat = typeof SEATED | WouldWaiter | null;

export const SEATED = 'seated' as const;

export class WouldBe {
  /** Seats taken; at most the budget, except right after a reload lowered it. */
  seated = 0;
  readonly queue = new List<WouldWaiter>();

  constructor(private readonly counts: WouldCounts) {}

  /** A connection starts serving a client of a service whose budget is `budget` (its would-be queue holds at most `maxWaiting`). */
  start(holder: SeatHolder, now: number, budget: number, maxWaiting: number): void {
    if (this.seated < budget && this.queue.size === 0) {
      this.seated++;
      holder.seat = SEATED;
    } else if (this.queue.size >= maxWaiting) {
      this.counts.wouldReject.queue_full++;
      holder.seat = null;
    } else {
      this.counts.wouldWait++;
      const w: WouldWaiter = { enqueuedAt: now, holder, qPrev: null, qNext: null, qList: null };
      this.queue.push(w);
      holder.seat = w;
    }
  }

  /** The connection stops serving its client (released, or gone): its seat passes on, or it leaves the queue. */
  stop(holder: SeatHolder, budget: number): void {
    const seat = holder.seat;
    holder.seat = null;
    if (seat === SEATED) {
      this.seated--;
      this.seatWaiters(budget);
    } else if (seat !== null) this.queue.delete(seat);
  }

  /** Periodic: would-be waiters past `timeoutMs` would have been refused; seats a raised budget freed go to waiters. */
  sweep(now: number, budget: number, timeoutMs: number): void {
    this.seatWaiters(budget);
    for (let w = this.queue.first(); w !== null && now - w.enqueuedAt >= timeoutMs; w = this.queue.first()) {
      this.queue.delete(w);
      w.holder.seat = null;
      this.counts.wouldReject.queue_timeout++;
    }
  }

  /** Age of the oldest would-be waiter, 0 when none. */
  oldestWaitMs(now: number): number {
    const first = this.queue.first();
    return first === null ? 0 : now - first.enqueuedAt;
  }

  /** Free seats (a seat freed, a budget raised) go to the would-be queue's head, in order. */
  seatWaiters(budget: number): void {
    for (let w = this.queue.first(); w !== null && this.seated < budget; w = this.queue.first()) {
      this.queue.delete(w);
      w.holder.seat = SEATED;
      this.seated++;
    }
  }
}

export function wouldCounts(): WouldCounts {
  return { wouldWait: 0, wouldReject: { queue_full: 0, queue_timeout: 0 } };
}

/** One sample of a dry-run service, taken once a second (proxy/dryRunWatch.ts). */
export interface DryRunSample extends WouldCounts {
  /** Clients served (connections active) and the budget. */
  inUse: number;
  budget: number;
  /** Clients in the would-be queue, and the oldest one's wait. */
  wouldBeWaiting: number;
  oldestWouldWaitMs: number;
}

export interface DryRunStart {
  kind: 'start';
  inUse: number;
  budget: number;
  wouldBeWaiting: number;
  oldestWouldWaitMs: number;
}

export interface DryRunEnd {
  kind: 'end';
  durationMs: number;
  budget: number;
  /** What enforcement would have done during the episode. */
  wouldWait: number;
  wouldReject: Record<WouldRejectReason, number>;
  peakInUse: number;
  peakWouldBeWaiting: number;
}

/** An episode ends after this long with no client beyond the budget. */
export const DRY_RUN_QUIET_MS = 5000;

/**
 * Episodes of a dry-run service exceeding its budget: one starts when a
 * client would have waited or been refused; it ends once nothing of the
 * kind happened and nobody was beyond the budget for DRY_RUN_QUIET_MS.
 */
export class DryRunEpisodes {
  private since: number | null = null;
  private lastBusyAt = 0;
  private atStart: WouldCounts = wouldCounts();
  private last: WouldCounts | null = null;
  private peakInUse = 0;
  private peakWaiting = 0;

  get active(): boolean {
    return this.since !== null;
  }

  evaluate(now: number, s: DryRunSample, quietMs = DRY_RUN_QUIET_MS): DryRunStart | DryRunEnd | null {
    const prev = this.last ?? s;
    this.last = copy(s);
    const happened = s.wouldWait > prev.wouldWait || WOULD_REJECT_REASONS.some((r) => s.wouldReject[r] > prev.wouldReject[r]);
    const busy = happened || s.wouldBeWaiting > 0;
    if (busy) this.lastBusyAt = now;
    if (this.since === null) {
      if (!happened) return null;
      this.since = now;
      this.atStart = copy(prev);
      this.peakInUse = s.inUse;
      this.peakWaiting = s.wouldBeWaiting;
      return { kind: 'start', inUse: s.inUse, budget: s.budget, wouldBeWaiting: s.wouldBeWaiting, oldestWouldWaitMs: s.oldestWouldWaitMs };
    }
    this.peakInUse = Math.max(this.peakInUse, s.inUse);
    this.peakWaiting = Math.max(this.peakWaiting, s.wouldBeWaiting);
    if (busy || now - this.lastBusyAt < quietMs) return null;
    const end: DryRunEnd = {
      kind: 'end',
      durationMs: now - this.since,
      budget: s.budget,
      wouldWait: s.wouldWait - this.atStart.wouldWait,
      wouldReject: { queue_full: s.wouldReject.queue_full - this.atStart.wouldReject.queue_full, queue_timeout: s.wouldReject.queue_timeout - this.atStart.wouldReject.queue_timeout },
      peakInUse: this.peakInUse,
      peakWouldBeWaiting: this.peakWaiting,
    };
    this.since = null;
    return end;
  }
}

function copy(c: WouldCounts): WouldCounts {
  return { wouldWait: c.wouldWait, wouldReject: { ...c.wouldReject } };
}
