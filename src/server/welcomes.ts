// The server's ParameterStatus values per pool key, so a client of a key
// seen before is welcomed without a server login. Keys come from what
// clients send (search_path, TimeZone, options…): the cache is bounded, and
// the least recently used key goes first. A key that lost its entry learns
// it again from its next login.

export type Welcome = [string, string][];

export class WelcomeCache {
  private readonly byKey = new Map<string, Welcome>();
  /** The key last used, which is already the newest: no reordering for it. */
  private newest = '';

  constructor(readonly limit: number) {}

  get size(): number {
    return this.byKey.size;
  }

  get(key: string): Welcome | undefined {
    const welcome = this.byKey.get(key);
    if (welcome !== undefined && key !== this.newest) {
      // Map keeps insertion order: re-inserting makes it the most recently used.
      this.byKey.delete(key);
      this.byKey.set(key, welcome);
      this.newest = key;
    }
    return welcome;
  }

  /** Keeps the first welcome seen for a key. */
  remember(key: string, welcome: Welcome): void {
    if (this.byKey.has(key)) return;
    this.byKey.set(key, welcome);
    this.newest = key;
    if (this.byKey.size > this.limit) this.byKey.delete(this.byKey.keys().next().value!);
  }
}
