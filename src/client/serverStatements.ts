// Prepared statements that exist on one server connection, under names the
// proxy chose, keyed by their text and parameter types. Least recently used
// first, so the oldest can be closed when the cache is full.

import { randomBytes } from 'node:crypto';

/**
 * Server-side names all start with this (random per process, so it cannot be
 * guessed from the outside); a client's own names never reach the server,
 * and SQL that names a statement with this prefix is refused.
 */
export const SERVER_STATEMENT_PREFIX = `__pgbudget_${randomBytes(4).toString('hex')}_`;

export class ServerStatements {
  private readonly byKey = new Map<string, string>();
  /** The result shape PostgreSQL fixed for a statement when it was prepared here (messages.rowShape), once described. */
  private readonly shapes = new Map<string, string>();
  private counter = 0;
  /**
   * Which Parse("") the server's unnamed statement holds, if any: the
   * client's own copy of the message, so that neither another client's nor
   * an older one of the same client's is taken for it.
   */
  unnamedOwner: Buffer | null = null;

  constructor(readonly max: number) {}

  get size(): number {
    return this.byKey.size;
  }

  /** The server name for this statement, marking it most recently used. */
  use(key: string): string | undefined {
    const name = this.byKey.get(key);
    if (name !== undefined) {
      this.byKey.delete(key);
      this.byKey.set(key, name);
    }
    return name;
  }

  /** The shape a statement here returns rows in, if it has been described. */
  shapeOf(name: string): string | undefined {
    return this.shapes.get(name);
  }

  /** Records the shape of a statement, if it is still the one recorded for its key. */
  setShape(key: string, name: string, shape: string): void {
    if (this.byKey.get(key) === name) this.shapes.set(name, shape);
  }

  /** Records a new statement; returns its server name and the ones to close to stay within max. */
  add(key: string): { name: string; evicted: string[] } {
    const name = `${SERVER_STATEMENT_PREFIX}${++this.counter}`;
    const evicted: string[] = [];
    const old = this.byKey.get(key);
    if (old !== undefined) {
      this.byKey.delete(key);
      evicted.push(old);
    }
    this.byKey.set(key, name);
    while (this.byKey.size > this.max) {
      const [k, n] = this.byKey.entries().next().value!;
      this.byKey.delete(k);
      evicted.push(n);
    }
    for (const n of evicted) this.shapes.delete(n);
    return { name, evicted };
  }

  /** Forgets a statement whose Parse failed, if it is still the one recorded. */
  forget(key: string, name: string): void {
    if (this.byKey.get(key) === name) this.byKey.delete(key);
    this.shapes.delete(name);
  }

  /** DEALLOCATE ALL or DISCARD ALL ran on the server. */
  clear(): void {
    this.byKey.clear();
    this.shapes.clear();
    this.unnamedOwner = null;
  }
}
