// Intrusive doubly-linked lists: the scheduler's connections and waiters
// each sit in exactly one of them, and a count is a list's length. Pure.
//
// The links live on the items themselves, so linking and unlinking is O(1)
// and allocates nothing. Not a Map (the waiter queue was one): a Map keeps a
// deleted entry's slot until its table is rebuilt, so with waiters leaving
// from the front, every walk from the head stepped over all who had left
// since. With 1000 clients queued for 20 server connections, the hand-off at
// each transaction's end cost about 6k instructions that way (callgrind), and
// each rebuilt table was garbage that kept waiters alive through scavenges.

/** A list's links, kept on the item itself. */
export interface Linked {
  /** @internal */ qPrev?: Linked | null;
  /** @internal */ qNext?: Linked | null;
  /** @internal The list the item is in, or null: an item is in one list at most. */
  qList?: List<Linked> | null;
}

/** A count shared by several lists (e.g. one state over all services), kept by the lists themselves. */
export interface Tally {
  size: number;
}

export class List<T extends Linked> {
  private head: T | null = null;
  private tail: T | null = null;
  private count = 0;

  constructor(private readonly tally: Tally | null = null) {}

  get size(): number {
    return this.count;
  }

  has(item: T): boolean {
    return item.qList === this;
  }

  /** The oldest item, or null. */
  first(): T | null {
    return this.head;
  }

  /** The newest item, or null. */
  last(): T | null {
    return this.tail;
  }

  /** The item after `item` (which must be in this list), or null. */
  next(item: T): T | null {
    return (item.qNext as T | null | undefined) ?? null;
  }

  /** The item before `item` (which must be in this list), or null. */
  prev(item: T): T | null {
    return (item.qPrev as T | null | undefined) ?? null;
  }

  /** Appends `item`; nothing happens when it is in a list already. */
  push(item: T): void {
    if (item.qList != null) return;
    const tail = this.tail;
    item.qPrev = tail;
    item.qNext = null;
    if (tail !== null) tail.qNext = item;
    else this.head = item;
    this.tail = item;
    this.linked(item);
  }

  /** Puts `item` at the head; nothing happens when it is in a list already. */
  unshift(item: T): void {
    if (item.qList != null) return;
    const head = this.head;
    item.qPrev = null;
    item.qNext = head;
    if (head !== null) head.qPrev = item;
    else this.tail = item;
    this.head = item;
    this.linked(item);
  }

  /** Puts `item` just before `before` (which must be in this list), or last when `before` is null; nothing happens when it is in a list already. */
  insertBefore(item: T, before: T | null): void {
    if (item.qList != null) return;
    if (before === null) return this.push(item);
    const prev = before.qPrev as T | null;
    item.qPrev = prev;
    item.qNext = before;
    before.qPrev = item;
    if (prev !== null) prev.qNext = item;
    else this.head = item;
    this.linked(item);
  }

  /** Removes `item`; false when it was not in this list. Its links are cleared, so a removed item points to no other. */
  delete(item: T): boolean {
    if (item.qList !== this) return false;
    // Both links are set (push and unshift set them), so no undefined here.
    const prev = item.qPrev as T | null;
    const next = item.qNext as T | null;
    if (prev !== null) prev.qNext = next;
    else this.head = next;
    if (next !== null) next.qPrev = prev;
    else this.tail = prev;
    item.qList = null;
    item.qPrev = null;
    item.qNext = null;
    this.count--;
    if (this.tally !== null) this.tally.size--;
    return true;
  }

  /** In order, oldest first. Removing the item just visited is safe; removing others during the walk is not. */
  *values(): IterableIterator<T> {
    let item = this.head;
    while (item) {
      const next = (item.qNext as T | null | undefined) ?? null;
      yield item;
      item = next;
    }
  }

  /**
   * What is wrong with the list's links, or null: each item must point back
   * to this list and to its neighbours, and the count must be the number of
   * items. For tests; O(length).
   */
  audit(check: (item: T) => string | null = () => null): string | null {
    let n = 0;
    let prev: T | null = null;
    for (let item = this.head; item; item = this.next(item)) {
      if (item.qList !== this) return 'an item points to another list';
      if ((item.qPrev ?? null) !== prev) return 'broken back link';
      const wrong = check(item);
      if (wrong) return wrong;
      prev = item;
      if (++n > this.count) break;
    }
    if (prev !== this.tail) return 'the tail is not the last item';
    if (n !== this.count) return `the count is ${this.count} but the list holds ${n}`;
    return null;
  }

  private linked(item: T): void {
    item.qList = this as List<Linked>;
    this.count++;
    if (this.tally !== null) this.tally.size++;
  }
}
