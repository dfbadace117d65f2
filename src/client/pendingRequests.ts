// The requests one client has sent to its server connection that still wait
// for their answer, in the order the server answers them; what each answer
// means (the client's, or the proxy's own to drop), what an error makes the
// server skip, and the shape checks those answers settle (prepared.ts).
// Pure: no sockets.
import { NO_ROWS, rowShape } from '../protocol/messages.js';
import type { ServerStatements } from './serverStatements.js';

/** A client's prepared statement, by the name the client gave it. */
export interface StatementDef {
  query: string;
  paramTypes: Buffer;
  /** Identity of the statement on any server connection: text and parameter types. */
  key: string;
  /** The result shape PostgreSQL fixed when the client prepared it (rowShape), once described; null before. */
  shape: string | null;
}

/** A request still waiting for its ParseComplete/BindComplete/CloseComplete, or the end of a batch. */
type Pending =
  | { kind: 'parse'; ours: boolean; key?: string; serverName?: string; clientName?: string; def?: StatementDef }
  | { kind: 'bind'; ours: boolean }
  /** A Close; of a client's named statement, with its definition, given back if the server skips the Close. */
  | { kind: 'close'; ours: boolean; clientName?: string; def?: StatementDef }
  /**
   * The proxy's own Describe of a statement it prepared (`key`/`serverName`),
   * which learns its shape. It always goes right after that statement's
   * Parse, so a description that comes while it is first in the queue is its
   * answer: the client's own Describes need no entry.
   */
  | { kind: 'describe'; ours: true; key: string; serverName: string; def?: StatementDef; check?: StatementDef }
  /** The proxy's own failing statement, whose ErrorResponse the client gets as `replacement`. */
  | { kind: 'error'; replacement: Buffer }
  | { kind: 'ready' };

/** How a shape check (a statement prepared again elsewhere) came out. */
export type ShapeVerdict = 'waiting' | 'same' | 'changed' | 'skipped';

export type CompletionKind = 'parse' | 'bind' | 'close';

// The requests with nothing of their own to remember are shared: no object per message.
const PARSE: Pending = Object.freeze({ kind: 'parse', ours: false });
const BIND: Pending = Object.freeze({ kind: 'bind', ours: false });
const CLOSE: Pending = Object.freeze({ kind: 'close', ours: false });
const READY: Pending = Object.freeze({ kind: 'ready' });
const OWN_PARSE: Pending = Object.freeze({ kind: 'parse', ours: true });
const OWN_BIND: Pending = Object.freeze({ kind: 'bind', ours: true });
const OWN_CLOSE: Pending = Object.freeze({ kind: 'close', ours: true });

export class PendingRequests {
  private pending: Pending[] = [];
  /** Pending entries that answer the proxy's own Describe or failing statement (their replies are read whole). */
  private ownReplies = 0;
  /** The shape check the client's held messages wait for; 'same' when there is none. */
  private verdict: ShapeVerdict = 'same';
  /**
   * After an error the server skips what it gets until the next Sync: a
   * check sent meanwhile would never be answered, so none is started until
   * the client's Sync goes out.
   */
  private skipping = false;

  /** The client's unnamed Parse, sent as it is. */
  parse(): void {
    this.pending.push(PARSE);
  }

  /** The client's Parse of `clientName`, sent as `serverName`; forgotten on both sides if the server skips or refuses it. */
  parseNamed(clientName: string, def: StatementDef, serverName: string): void {
    this.pending.push({ kind: 'parse', ours: false, key: def.key, serverName, clientName, def });
  }

  /** The proxy's own Parse; of the server's `serverName` for `key`, forgotten if the server skips or refuses it. */
  ownParse(key?: string, serverName?: string): void {
    this.pending.push(key === undefined ? OWN_PARSE : { kind: 'parse', ours: true, key, serverName });
  }

  /** The client's Bind. */
  bind(): void {
    this.pending.push(BIND);
  }

  /** The proxy's own Bind. */
  ownBind(): void {
    this.pending.push(OWN_BIND);
  }

  /** The client's Close; `def` is the statement of `clientName` it closes, if any. */
  close(clientName: string, def: StatementDef | undefined): void {
    this.pending.push(def ? { kind: 'close', ours: false, clientName, def } : CLOSE);
  }

  /** The proxy's own Close (of a statement evicted from the server's cache). */
  ownClose(): void {
    this.pending.push(OWN_CLOSE);
  }

  /** The proxy's own Describe of `serverName`, which learns the shape the client's new statement `def` keeps. */
  describe(def: StatementDef, serverName: string): void {
    this.pending.push({ kind: 'describe', ours: true, key: def.key, serverName, def });
    this.ownReplies++;
  }

  /** The proxy's own Describe of `serverName`, prepared again for `def`: held messages wait for its verdict. */
  describeToCheck(def: StatementDef, serverName: string): void {
    this.pending.push({ kind: 'describe', ours: true, key: def.key, serverName, check: def });
    this.ownReplies++;
    this.verdict = 'waiting';
  }

  /**
   * Whether a Describe of `serverName` is on its way; if so, its answer also
   * checks `def`'s shape, and held messages wait for the verdict.
   */
  checkWith(serverName: string, def: StatementDef): boolean {
    const describing = this.pending.find((p) => p.kind === 'describe' && p.serverName === serverName);
    if (describing === undefined || describing.kind !== 'describe') return false;
    describing.check = def;
    this.verdict = 'waiting';
    return true;
  }

  /** The proxy's own failing statement, whose error the client gets as `replacement`. */
  error(replacement: Buffer): void {
    this.pending.push({ kind: 'error', replacement });
    this.ownReplies++;
  }

  /** A Sync: after it, the server reads again; ReadyForQuery answers it. */
  sync(): void {
    this.skipping = false;
    this.pending.push(READY);
  }

  /** A Query or FunctionCall: ReadyForQuery ends its answer. */
  ready(): void {
    this.pending.push(READY);
  }

  /** Whether the server skips what it gets until the client's next Sync (after an error). */
  get serverSkipping(): boolean {
    return this.skipping;
  }

  /** Whether replies the proxy must read whole, or drop, are on their way (the session then holds back unfinished messages). */
  get expectsOwnReplies(): boolean {
    return this.ownReplies > 0;
  }

  /** Where the shape check that held messages wait for stands. */
  get shapeVerdict(): ShapeVerdict {
    return this.verdict;
  }

  /** The verdict of the shape check, which held messages no longer wait for. */
  takeVerdict(): ShapeVerdict {
    const verdict = this.verdict;
    this.verdict = 'same';
    return verdict;
  }

  /**
   * The server sent ParseComplete ('1'), BindComplete ('2') or CloseComplete
   * ('3'): true when it answers a message the proxy injected, so it must not
   * reach the client.
   */
  onComplete(type: CompletionKind): boolean {
    const head = this.pending.length > 0 ? this.pending[0].kind : 'ready';
    const i = head === 'parse' || head === 'bind' || head === 'close' ? 0 : this.pending.findIndex((p) => p.kind === 'parse' || p.kind === 'bind' || p.kind === 'close');
    if (i < 0) return false;
    const p = i === 0 ? this.pending.shift()! : this.pending.splice(i, 1)[0];
    if (p.kind !== type) return false; // out of step: forward, never swallow what the client may need
    return (p as { ours: boolean }).ours;
  }

  /**
   * ParameterDescription ('t'), RowDescription ('T') or NoData ('n') at
   * [start, end) of `buf`: the answer to the oldest Describe, or part of a
   * simple Query's result. Returns true when it answers the proxy's own
   * Describe, which the client must not see.
   */
  onDescription(type: number, buf: Buffer, start: number, end: number, server: ServerStatements): boolean {
    const head = this.pending[0];
    if (head === undefined || head.kind !== 'describe') return false;
    if (type === 0x74) return true; // 't' comes first; 'T' or 'n' ends the answer
    this.pending.shift();
    this.ownReplies--;
    const shape = type === 0x54 ? rowShape(buf, start, end) : NO_ROWS;
    server.setShape(head.key, head.serverName, shape);
    if (head.def && head.def.shape === null) head.def.shape = shape;
    if (head.check) this.verdict = shape === head.check.shape ? 'same' : 'changed';
    return true;
  }

  /**
   * An ErrorResponse: the server skips the rest of the batch, so requests
   * before the next ReadyForQuery get no completion. Statements whose Parse
   * was skipped or failed are forgotten, on `server` and in the client's `defs`.
   */
  onError(server: ServerStatements, defs: Map<string, StatementDef>): Buffer | null {
    const head = this.pending[0];
    const replacement = head !== undefined && head.kind === 'error' ? head.replacement : null;
    const end = this.pending.findIndex((p) => p.kind === 'ready');
    this.forgetSkipped(this.pending.splice(0, end < 0 ? this.pending.length : end), server, defs);
    // No Sync is out yet: what is sent until the client's next one is skipped.
    if (end < 0) this.skipping = true;
    return replacement;
  }

  private forgetSkipped(skipped: Pending[], server: ServerStatements, defs: Map<string, StatementDef>): void {
    // Latest first: undoing them in reverse gives back what the client had before the first.
    for (let i = skipped.length - 1; i >= 0; i--) {
      const p = skipped[i];
      if (p.kind === 'describe') {
        this.ownReplies--;
        if (p.check) this.verdict = 'skipped';
        continue;
      }
      if (p.kind === 'error') this.ownReplies--;
      // A Close the server skipped closed nothing: the statement is the client's still.
      if (p.kind === 'close' && p.def && !defs.has(p.clientName!)) defs.set(p.clientName!, p.def);
      if (p.kind !== 'parse') continue;
      if (p.key && p.serverName) server.forget(p.key, p.serverName);
      if (p.clientName && p.def && defs.get(p.clientName) === p.def) defs.delete(p.clientName);
    }
  }

  /** Requests before this ReadyForQuery that got no completion were skipped after an error. */
  onReadyForQuery(server: ServerStatements, defs: Map<string, StatementDef>): void {
    // Usual case: every request before it was answered; nothing to search or forget.
    if (this.pending.length > 0 && this.pending[0].kind === 'ready') {
      this.pending.shift();
      return;
    }
    const end = this.pending.findIndex((p) => p.kind === 'ready');
    this.forgetSkipped(this.pending.splice(0, end + 1), server, defs);
  }

  /** Syncs that the server ignored (sent during COPY FROM STDIN) will get no ReadyForQuery. */
  dropIgnoredSyncs(n: number): void {
    for (let k = 0; k < n; k++) {
      for (let i = this.pending.length - 1; i >= 0; i--) {
        if (this.pending[i].kind === 'ready') {
          this.pending.splice(i, 1);
          break;
        }
      }
    }
  }

  /** Linked to another server connection: nothing is outstanding at a boundary. */
  reset(): void {
    if (this.pending.length > 0) this.pending = [];
    this.ownReplies = 0;
    this.skipping = false;
  }
}
