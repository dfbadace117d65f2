// The live sessions, in slots: iterated at shutdown, and found by the
// process id of their BackendKeyData when a cancel request comes.
//
// Not a Map or Set: with one entry added and removed per connection, a
// Map's table is rebuilt every few connections, and V8 links each discarded
// table to its successor. A discarded table that had been promoted kept the
// whole chain, and every session any table pointed to, alive through each
// scavenge: under pgbench -C about 2 MB of dead sessions were promoted per
// scavenge (10-20 ms of GC per 700 connections). Slots reused through a free
// list churn nothing.

/**
 * Slot numbers take the low bits of a process id; the high bits are random,
 * and never 0 or 1: an id of the proxy's own is at least 2^22, above every
 * Linux pid (pid_max is at most 2^22), so it never equals the real process
 * id of a server, which session-mode clients are given (bindServerPid).
 */
const SLOT_BITS = 21;
const HIGH_MIN = 2;
const HIGH_VALUES = 1024 - HIGH_MIN;
const SLOT_MASK = (1 << SLOT_BITS) - 1;
/** At most this many sessions at once (about two million). */
export const MAX_SESSIONS = SLOT_MASK;

export interface Registered {
  readonly processId: number;
}

export class SessionRegistry<T extends Registered> {
  private readonly slots: (T | null)[] = [];
  private readonly free: number[] = [];
  private count = 0;
  /** Entries known by the real process id of the server connection they hold (session mode). */
  private readonly byServerPid = new Map<number, T>();

  /**
   * A process id for a new entry: unique among the live ones, positive
   * int32, and not guessable from the last one. Must be followed by add().
   */
  nextProcessId(random: number): number {
    const slot = this.free.length > 0 ? this.free[this.free.length - 1] : this.slots.length;
    if (slot >= MAX_SESSIONS) throw new Error(`more than ${MAX_SESSIONS} sessions`);
    // The high part is 2..1023, so the id is at least 2^22 and below 2^31.
    return ((HIGH_MIN + (Math.abs(Math.trunc(random)) % HIGH_VALUES)) << SLOT_BITS) | (slot + 1);
  }

  /** Registers an entry whose processId came from nextProcessId(). */
  add(entry: T): void {
    const slot = (entry.processId & SLOT_MASK) - 1;
    if (this.free.length > 0 && this.free[this.free.length - 1] === slot) this.free.pop();
    else if (slot !== this.slots.length) throw new Error(`process id ${entry.processId} was not handed out`);
    this.slots[slot] = entry;
    this.count++;
  }

  delete(entry: T): void {
    const slot = (entry.processId & SLOT_MASK) - 1;
    if (this.slots[slot] !== entry) return;
    this.slots[slot] = null;
    this.free.push(slot);
    this.count--;
  }

  /** The live entry with this process id (its own, or its server's real one), if any. */
  get(processId: number): T | undefined {
    const entry = this.slots[(processId & SLOT_MASK) - 1];
    if (entry && entry.processId === processId) return entry;
    return this.byServerPid.size === 0 ? undefined : this.byServerPid.get(processId);
  }

  /** `entry` gave its client the real process id `pid` of the server connection it holds: cancels with it find the entry. */
  bindServerPid(pid: number, entry: T): void {
    this.byServerPid.set(pid, entry);
  }

  /** `entry` no longer holds the server connection of process id `pid`; another entry bound since keeps it. */
  unbindServerPid(pid: number, entry: T): void {
    if (this.byServerPid.get(pid) === entry) this.byServerPid.delete(pid);
  }

  get size(): number {
    return this.count;
  }

  /** Calls `fn` for each live entry, without copying them out; `fn` may delete entries. */
  forEach(fn: (entry: T) => void): void {
    const slots = this.slots;
    for (let i = 0; i < slots.length; i++) {
      const e = slots[i];
      if (e) fn(e);
    }
  }

  /** A copy of the live entries. */
  values(): T[] {
    const out: T[] = [];
    for (const e of this.slots) if (e) out.push(e);
    return out;
  }
}
