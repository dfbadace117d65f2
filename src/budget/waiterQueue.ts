// A service's queue of waiters: first in, first out, with O(1) removal of a
// waiter who leaves from anywhere in it. Pure.
//
// Not a Map (it was one): a Map keeps a deleted entry's slot until its table
// is rebuilt, so with waiters leaving from the front, every walk from the
// head stepped over all who had left since. With 1000 clients queued for 20
// server connections, the hand-off at each transaction's end cost about 6k
// instructions that way (callgrind), and each rebuilt table was garbage that
// kept waiters alive through scavenges.

/** The queue's links, kept on the waiter object itself. */
export interface Linked {
  /** @internal */ qPrev?: Linked | null;
  /** @internal */ qNext?: Linked | null;
  /** @internal */ qIn?: boolean;
}

export class WaiterQueue<T extends Linked> {
  private head: T | null = null;
  private tail: T | null = null;
  private count = 0;

  get size(): number {
    return this.count;
  }

  has(w: T): boolean {
    return w.qIn === true;
  }

  /** The oldest waiter, or null. */
  first(): T | null {
    return this.head;
  }

  /** The waiter after `w` (which must be queued), or null. */
  next(w: T): T | null {
    return (w.qNext as T | null | undefined) ?? null;
  }

  push(w: T): void {
    if (w.qIn) return;
    w.qIn = true;
    w.qPrev = this.tail;
    w.qNext = null;
    if (this.tail) this.tail.qNext = w;
    else this.head = w;
    this.tail = w;
    this.count++;
  }

  unshift(w: T): void {
    if (w.qIn) return;
    w.qIn = true;
    w.qPrev = null;
    w.qNext = this.head;
    if (this.head) this.head.qPrev = w;
    else this.tail = w;
    this.head = w;
    this.count++;
  }

  /** Removes `w`; false when it was not queued. Its links are cleared, so a removed waiter points to no other. */
  delete(w: T): boolean {
    if (!w.qIn) return false;
    const prev = (w.qPrev as T | null | undefined) ?? null;
    const next = (w.qNext as T | null | undefined) ?? null;
    if (prev) prev.qNext = next;
    else this.head = next;
    if (next) next.qPrev = prev;
    else this.tail = prev;
    w.qIn = false;
    w.qPrev = null;
    w.qNext = null;
    this.count--;
    return true;
  }

  /** In queue order. Removing the waiter just visited is safe; removing others during the walk is not. */
  *values(): IterableIterator<T> {
    let w = this.head;
    while (w) {
      const next = (w.qNext as T | null | undefined) ?? null;
      yield w;
      w = next;
    }
  }
}
