// Who gets capacity when the budgets add up to more than the cap: the
// services take turns (round-robin), and a service another one yielded a
// slot to comes first. The whole rule is here, for its three uses: a
// connection released at the cap (kept, or closed for the service whose
// turn it is), new connections (which service opens next), and idle
// connections evicted at the cap for services it blocks. Pure.
import type { Conn, ServiceState } from './service.js';

/** What the rule acts through: the scheduler's own transitions. `Out` collects their actions. */
export interface Capacity<Out> {
  /** No slot left under the cap. */
  full(): boolean;
  /** A new connection may be opened now: a slot under the cap, and no upstream backoff. */
  mayOpen(now: number): boolean;
  /** Connections closing, of all services (their slots are already on their way back). */
  closingTotal(): number;
  open(s: ServiceState, key: string, now: number, out: Out): void;
  evict(conn: Conn, out: Out): void;
}

export class Fairness {
  /** In the order they were added; the turn walks it. */
  private readonly order: ServiceState[] = [];
  /** Index in `order` of the service whose turn it is. */
  private turn = 0;

  get services(): readonly ServiceState[] {
    return this.order;
  }

  add(s: ServiceState): void {
    this.order.push(s);
  }

  remove(s: ServiceState): void {
    const i = this.order.indexOf(s);
    if (i >= 0) this.order.splice(i, 1);
    if (this.turn >= this.order.length) this.turn = 0;
  }

  /** Nobody waits: no promise is owed. */
  dropReservations(): void {
    for (const s of this.order) s.reserved = 0;
  }

  /**
   * A connection of `s` is released with the cap full. It stays with `s`
   * when `s` has waiters and it is their turn, or when no other service
   * wants the slot; else it closes (true), and the slot is promised to the
   * service whose turn it is. So one busy service cannot keep every slot
   * under the cap.
   */
  yields(s: ServiceState): boolean {
    // A dry run beyond its budget only borrowed the slot: anyone within theirs comes first.
    if (s.borrowing) {
      for (let i = 0; i < this.order.length; i++) {
        const o = this.at(i);
        if (o === s || !this.wantsSlot(o)) continue;
        o.reserved++;
        this.passTurn(o);
        return true;
      }
    }
    for (let i = 0; i < this.order.length; i++) {
      const o = this.at(i);
      if (o === s ? s.waiting.size === 0 : !this.wantsSlot(o)) continue;
      if (o !== s) o.reserved++;
      this.passTurn(o);
      return o !== s;
    }
    return false;
  }

  /**
   * Waiters remain after idle connections were handed out: opens new
   * connections within budget and cap, one at a time, services holding a
   * reservation first and then in turn; at the cap, evicts idle connections
   * (oldest first) that no waiter of their own service can use.
   */
  share<Out>(c: Capacity<Out>, now: number, out: Out): void {
    // Skipped when no service with waiters is under budget or has an idle
    // connection to evict (every queued hand-off at saturation): only
    // reservations of services with nothing unmet are dropped, as the walk would.
    let progress = this.anyCanGrow();
    if (!progress) for (const s of this.order) if (s.reserved > 0 && s.unmetKey() === null) s.reserved = 0;
    while (progress) {
      progress = false;
      // Reservation holders, then the rest. A service that loses its
      // reservation in the first walk (nothing unmet) is seen again in the
      // second, where nothing unmet means nothing to do.
      for (let walk = 0; walk < 2 && !progress; walk++) {
        for (let i = 0; i < this.order.length && !progress; i++) {
          const s = this.at(i);
          if (s.reserved > 0 === (walk === 0)) progress = this.serve(s, c, now, out);
        }
      }
      // Nobody within their budget can use a slot: dry runs beyond theirs borrow what is left.
      for (let i = 0; i < this.order.length && !progress; i++) progress = this.borrow(this.at(i), c, now, out);
    }
    if (c.full()) this.evictForCapBlocked(c, out);
  }

  /** The idle connection unused longest, of any service (but a pinned one when `skipPinned`); null when none is. */
  oldestIdle(skipPinned: boolean): Conn | null {
    let oldest: Conn | null = null;
    for (const s of this.order)
      if (!skipPinned || s.limits.pinned !== true)
        for (let c = s.idle.first(); c !== null; c = s.idle.next(c)) if (!oldest || c.idleSince < oldest.idleSince) oldest = c;
    return oldest;
  }

  /** Index of the turn, for audits. */
  get turnIndex(): number {
    return this.turn;
  }

  /** One service's step of share(): true when it opened a connection. */
  private serve<Out>(s: ServiceState, c: Capacity<Out>, now: number, out: Out): boolean {
    const key = s.unmetKey();
    if (key === null) {
      s.reserved = 0;
      return false;
    }
    if (s.held >= s.allowed) {
      // A dry run borrows a slot once the others had their turn (borrow()).
      if (!s.enforced && c.mayOpen(now)) return false;
      // At budget: an idle connection of another key is the only way to a slot.
      const idle = s.idle.first();
      if (idle !== null && s.closing.size < s.unmetCount(key)) c.evict(idle, out);
      return false;
    }
    if (!c.mayOpen(now)) return false;
    c.open(s, key, now, out);
    if (s.reserved > 0) s.reserved--;
    this.passTurn(s);
    return true;
  }

  /** A dry run at or beyond its budget opens a connection with a slot free under the cap: true when it did. */
  private borrow<Out>(s: ServiceState, c: Capacity<Out>, now: number, out: Out): boolean {
    if (s.enforced || s.held < s.allowed || !c.mayOpen(now)) return false;
    const key = s.unmetKey();
    if (key === null) return false;
    c.open(s, key, now, out);
    return true;
  }

  /**
   * The idle connection to close first for the cap: a borrowed one (a dry
   * run beyond its budget), else the one unused longest. A pinned service's
   * idle connection makes room for services the cap keeps waiting, but does
   * not close for a cap that fell below what is held (`forLowerCap`).
   */
  evictable(forLowerCap = false): Conn | null {
    for (const s of this.order) if (s.borrowing && s.idle.size > 0) return s.idle.first();
    return this.oldestIdle(forLowerCap);
  }

  /** The cap is full and services under budget still wait: idle connections close for them. */
  private evictForCapBlocked<Out>(c: Capacity<Out>, out: Out): void {
    let wanted = -c.closingTotal();
    for (const s of this.order) {
      const key = this.capBlockedKey(s);
      if (key !== null) wanted += s.unmetCount(key);
    }
    for (; wanted > 0; wanted--) {
      const oldest = this.evictable();
      if (!oldest) break;
      c.evict(oldest, out);
    }
  }

  /** Blocked by the cap, with more waiters unmet than slots promised to it. */
  private wantsSlot(s: ServiceState): boolean {
    const key = this.capBlockedKey(s);
    return key !== null && s.reserved < s.unmetCount(key);
  }

  /** The key of waiters that only the cap keeps from a new connection (the service is under budget), or null. */
  private capBlockedKey(s: ServiceState): string | null {
    return s.held < s.allowed ? s.unmetKey() : null;
  }

  private anyCanGrow(): boolean {
    for (const s of this.order) if (s.waiting.size > 0 && (s.held < s.allowed || s.idle.size > 0 || !s.enforced)) return true;
    return false;
  }

  /** The i-th service counting from the one whose turn it is. */
  private at(i: number): ServiceState {
    return this.order[(this.turn + i) % this.order.length];
  }

  private passTurn(s: ServiceState): void {
    this.turn = (this.order.indexOf(s) + 1) % Math.max(this.order.length, 1);
  }
}
