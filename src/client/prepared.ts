// Named prepared statements across pooled server connections (transaction
// mode). A client's statements are remembered by name; on the server
// connection it holds at the moment, each lives under a proxy-chosen name.
// When the client binds or describes a statement that connection has not
// seen, a Parse is injected first, and the server's ParseComplete for it is
// dropped on the way back, so the client sees exactly the stream it expects.
//
// PostgreSQL fixes a prepared statement's result shape when it is prepared,
// and refuses to run it in another (0A000 "cached plan must not change
// result type"). So the proxy describes every statement it prepares, keeps
// the shape each client's statement had, uses a server's statement only in
// the shape the client knows, and when it must prepare one again, holds the
// client's messages until the server says whether the shape is still the
// same: if not, the client gets PostgreSQL's own error instead of rows it
// would misread.
// Pure: messages in, messages out.
import {
  buildBind,
  buildExecute,
  buildParse,
  buildQuery,
  buildTarget,
  FLUSH,
  NO_ROWS,
  rowShape,
  readBindStatement,
  readParse,
  readQuery,
  readTarget,
  rewriteBindStatement,
} from '../protocol/messages.js';
import { clientErrors } from '../errors.js';
import { errorResponse } from '../protocol/encode.js';
import { SERVER_STATEMENT_PREFIX, type ServerStatements } from './serverStatements.js';
import { stripSql } from './sessionState.js';
import { DROP_WORD, messageSqlWords } from './sqlWords.js';

interface StatementDef {
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

/** What ensure() returns when the client's message must wait for a shape check. */
const HELD = '\u0000held';

/** A statement that fails with the given error when executed, in any protocol. */
export function raiseStatement(code: string, message: string, hint: string): string {
  const lit = (s: string) => `'${s.replace(/'/g, "''")}'`;
  return `DO $pgbudget$BEGIN RAISE EXCEPTION USING ERRCODE = ${lit(code)}, MESSAGE = ${lit(message)}, HINT = ${lit(hint)}; END$pgbudget$`;
}

const PLAN_CHANGED_ERROR = errorResponse(clientErrors.cachedPlanChanged());
/** Raises that error on the server, so that its transaction state and skipping to Sync are PostgreSQL's own. */
const PLAN_CHANGED_SQL = raiseStatement('0A000', clientErrors.cachedPlanChanged().message, '');

export type CompletionKind = 'parse' | 'bind' | 'close';

// The requests with nothing of their own to remember are shared: no object per message.
const PARSE: Pending = Object.freeze({ kind: 'parse', ours: false });
const BIND: Pending = Object.freeze({ kind: 'bind', ours: false });
const CLOSE: Pending = Object.freeze({ kind: 'close', ours: false });
const READY: Pending = Object.freeze({ kind: 'ready' });

/** A name no server connection ever has: what unknown client names are sent as. */
const ABSENT = `${SERVER_STATEMENT_PREFIX}absent`;

const DEALLOCATE = /^\s*deallocate\s+(?:prepare\s+)?("(?:[^"]|"")+"|[^\s;]+)\s*;?\s*$/i;
const DEALLOCATE_ALL = /^\s*deallocate\s+(?:prepare\s+)?all\s*;?\s*$/i;
const DISCARD_ALL = /^\s*discard\s+all\s*;?\s*$/i;
/** Any statement that may drop prepared statements on the server, anywhere in a multi-statement string. */
const DROPS_STATEMENTS = /(^|;)\s*(deallocate|discard)\b/i;

function keyOf(query: string, paramTypes: Buffer): string {
  return `${paramTypes.toString('hex')}:${query}`;
}

function unquote(identifier: string): string {
  return identifier.startsWith('"') ? identifier.slice(1, -1).replace(/""/g, '"') : identifier.toLowerCase();
}

export class PreparedStatements {
  private readonly defs = new Map<string, StatementDef>();
  /** The client's last Parse("") message (a copy), which the server keeps until the next Parse("") or Query. */
  private unnamed: Buffer | null = null;
  private pending: Pending[] = [];
  /** Pending entries that answer the proxy's own Describe or failing statement (their replies are read whole). */
  private ownReplies = 0;
  /** The shape check the client's held messages wait for; 'same' when there is none. */
  private verdict: ShapeVerdict = 'same';
  /** The held message to refuse with 0A000 when it is rewritten (afterShapeCheck). */
  private refuseNext: Buffer | null = null;
  /**
   * After an error the server skips what it gets until the next Sync: a
   * check sent meanwhile would never be answered, so none is started until
   * the client's Sync goes out.
   */
  private serverSkipping = false;
  /** The last message whose SQL words were read, and its flags (see sqlWords). */
  private wordsOf: Buffer | null = null;
  private wordsFlags = 0;

  /**
   * messageSqlWords, remembered for this client's last message: the session
   * checks a statement when it arrives and the rewrite looks again when it is
   * forwarded, and while it waits in the queue other clients' statements are
   * read in between (a memo shared by all clients would have moved on). Let
   * go of at ReadyForQuery, so an idle client keeps no chunk alive.
   */
  sqlWords(msg: Buffer): number {
    if (msg !== this.wordsOf) {
      this.wordsOf = msg;
      this.wordsFlags = messageSqlWords(msg);
    }
    return this.wordsFlags;
  }

  /** A Parse whose SQL may drop prepared statements (DEALLOCATE, DISCARD); cheap test first. */
  private mayDropStatements(parse: Buffer): boolean {
    if ((this.sqlWords(parse) & DROP_WORD) === 0) return false;
    return DROPS_STATEMENTS.test(stripSql(readParse(parse).query));
  }

  /**
   * Rewrites one whole client message for the server connection whose
   * statements are `server`; appends the messages to send in its place.
   * Returns false when the message cannot go yet: a statement it names was
   * prepared again and its shape is being checked. Then `out` holds the
   * check, and this message and all after it wait until shapeVerdict is
   * no longer 'waiting' (see resume in the session).
   */
  rewrite(msg: Buffer, server: ServerStatements, out: Buffer[]): boolean {
    if (msg === this.refuseNext) {
      this.refuseNext = null;
      this.refuse(PLAN_CHANGED_SQL, server, out, PLAN_CHANGED_ERROR);
      return true;
    }
    switch (msg[0]) {
      case 0x50: // 'P' Parse
        this.parse(msg, server, out);
        return true;
      case 0x42: {
        // 'B' Bind
        // Unnamed portal and statement (most drivers' default): nothing to decode.
        const statement = msg[5] === 0 && msg[6] === 0 ? '' : readBindStatement(msg).statement;
        const name = statement === '' ? this.ensureUnnamed(server, out) : this.ensure(statement, server, out);
        if (name === HELD) return false;
        this.pending.push(BIND);
        out.push(name === statement ? msg : rewriteBindStatement(msg, name));
        return true;
      }
      case 0x44: {
        // 'D' Describe
        if (msg[5] !== 0x53) break; // a portal: names nothing of ours
        const { name } = readTarget(msg);
        const target = name === '' ? this.ensureUnnamed(server, out) : this.ensure(name, server, out);
        if (target === HELD) return false;
        out.push(target === name ? msg : buildTarget('D', 'S', target));
        return true;
      }
      case 0x43: {
        // 'C' Close: the client's name goes away; the server keeps its copy
        // cached for others. Closing an absent name still yields CloseComplete.
        const { kind, name } = readTarget(msg);
        const def = kind === 'S' && name !== '' ? this.defs.get(name) : undefined;
        this.pending.push(def ? { kind: 'close', ours: false, clientName: name, def } : CLOSE);
        if (kind !== 'S') break;
        if (name === '') {
          // The server's unnamed statement may be another client's: only ours is closed.
          const ours = this.unnamed !== null && server.unnamedOwner === this.unnamed;
          this.unnamed = null;
          if (!ours) {
            out.push(buildTarget('C', 'S', ABSENT));
            return true;
          }
          server.unnamedOwner = null;
          break;
        }
        this.defs.delete(name);
        out.push(buildTarget('C', 'S', ABSENT));
        return true;
      }
      case 0x53: // 'S' Sync: after it, the server reads again
        this.serverSkipping = false;
        this.pending.push(READY);
        break;
      case 0x46: // 'F' FunctionCall
        this.pending.push(READY);
        break;
      case 0x51: // 'Q' Query: also destroys the unnamed statement
        this.pending.push(READY);
        this.unnamed = null;
        server.unnamedOwner = null;
        this.query(msg, server, out);
        return true;
    }
    out.push(msg);
    return true;
  }

  /**
   * The server sent ParseComplete ('1') or CloseComplete ('3'): true when it
   * answers a message the proxy injected, so it must not reach the client.
   */
  onComplete(type: CompletionKind): boolean {
    const head = this.pending.length > 0 ? this.pending[0].kind : 'ready';
    const i = head === 'parse' || head === 'bind' || head === 'close' ? 0 : this.pending.findIndex((p) => p.kind === 'parse' || p.kind === 'bind' || p.kind === 'close');
    if (i < 0) return false;
    const p = i === 0 ? this.pending.shift()! : this.pending.splice(i, 1)[0];
    if (p.kind !== type) return false; // out of step: forward, never swallow what the client may need
    return (p as { ours: boolean }).ours;
  }

  /** Whether replies the proxy must read whole, or drop, are on their way (the session then holds back unfinished messages). */
  get expectsOwnReplies(): boolean {
    return this.ownReplies > 0;
  }

  /** Where the shape check that held messages wait for stands. */
  get shapeVerdict(): ShapeVerdict {
    return this.verdict;
  }

  /**
   * The messages that waited for a shape check (the first is the one that
   * named the statement), as they go on now that it is answered. If the
   * statement returns rows in another shape than the client's, PostgreSQL
   * refuses that Bind or Describe with 0A000 and skips what follows up to the
   * Sync: so the first is refused with PostgreSQL's own error, and the rest
   * up to the Sync is left out.
   */
  afterShapeCheck(held: Buffer[]): Buffer[] {
    const verdict = this.verdict;
    this.verdict = 'same';
    if (verdict !== 'changed' || held.length === 0) return held;
    let next = 1;
    while (next < held.length && held[next][0] !== 0x53) next++;
    this.refuseNext = held[0];
    return [held[0], ...held.slice(next)];
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
   * A refused Parse (session state, onSessionState: error) becomes the
   * proxy's own unnamed Parse, Bind and Execute of a statement that raises
   * the error, with their completions dropped: the client gets the error,
   * then the ReadyForQuery of its own Sync, as if the server had refused it.
   */
  refuse(raiseSql: string, server: ServerStatements, out: Buffer[], replacement?: Buffer): void {
    server.unnamedOwner = null;
    this.pending.push({ kind: 'parse', ours: true }, { kind: 'bind', ours: true });
    if (replacement) {
      // The server's error, raised by a DO block, is replaced by the one PostgreSQL itself would send.
      this.pending.push({ kind: 'error', replacement });
      this.ownReplies++;
    }
    out.push(buildParse('', raiseSql, Buffer.from([0, 0])), buildBind('', ''), buildExecute(''));
  }

  /**
   * An ErrorResponse: the server skips the rest of the batch, so requests
   * before the next ReadyForQuery get no completion. Statements whose Parse
   * was skipped or failed are forgotten.
   */
  onError(server: ServerStatements): Buffer | null {
    const head = this.pending[0];
    const replacement = head !== undefined && head.kind === 'error' ? head.replacement : null;
    const end = this.pending.findIndex((p) => p.kind === 'ready');
    this.forgetSkipped(this.pending.splice(0, end < 0 ? this.pending.length : end), server);
    // No Sync is out yet: what is sent until the client's next one is skipped.
    if (end < 0) this.serverSkipping = true;
    return replacement;
  }

  private forgetSkipped(skipped: Pending[], server: ServerStatements): void {
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
      if (p.kind === 'close' && p.def && !this.defs.has(p.clientName!)) this.defs.set(p.clientName!, p.def);
      if (p.kind !== 'parse') continue;
      if (p.key && p.serverName) server.forget(p.key, p.serverName);
      if (p.clientName && p.def && this.defs.get(p.clientName) === p.def) this.defs.delete(p.clientName);
    }
  }

  /** Requests before this ReadyForQuery that got no completion were skipped after an error. */
  onReadyForQuery(server: ServerStatements): void {
    this.wordsOf = null;
    // Usual case: every request before it was answered; nothing to search or forget.
    if (this.pending.length > 0 && this.pending[0].kind === 'ready') {
      this.pending.shift();
      return;
    }
    const end = this.pending.findIndex((p) => p.kind === 'ready');
    this.forgetSkipped(this.pending.splice(0, end + 1), server);
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
  resetPending(): void {
    if (this.pending.length > 0) this.pending = [];
    this.ownReplies = 0;
    this.serverSkipping = false;
  }

  private parse(msg: Buffer, server: ServerStatements, out: Buffer[]): void {
    if (msg[5] === 0) {
      // Unnamed (the name is the empty string): kept as bytes, re-sent as is when needed.
      if (this.mayDropStatements(msg)) server.clear();
      // A copy: a view would keep the whole chunk it came in (or a shared
      // pool slab) alive for as long as the client stays idle. Drivers send
      // the same unnamed Parse again and again: then the copy is kept.
      if (this.unnamed === null || !this.unnamed.equals(msg)) this.unnamed = Buffer.from(msg);
      server.unnamedOwner = this.unnamed;
      this.pending.push(PARSE);
      out.push(msg);
      return;
    }
    const parsed = readParse(msg);
    if (this.mayDropStatements(msg)) server.clear();
    // A name reused with other text is simply redefined: prepared afresh.
    // paramTypes copied: a view would keep the whole chunk it came in alive as long as the statement.
    const paramTypes = Buffer.from(parsed.paramTypes);
    const def: StatementDef = { query: parsed.query, paramTypes, key: keyOf(parsed.query, paramTypes), shape: null };
    this.defs.set(parsed.name, def);
    const { name, evicted } = server.add(def.key);
    this.closeEvicted(evicted, out);
    this.pending.push({ kind: 'parse', ours: false, key: def.key, serverName: name, clientName: parsed.name, def });
    out.push(buildParse(name, def.query, def.paramTypes));
    // The shape PostgreSQL fixes now is the one the client's statement keeps: learned in the same batch.
    this.describeOurs({ kind: 'describe', ours: true, key: def.key, serverName: name, def }, out);
  }

  private describeOurs(entry: Pending & { kind: 'describe' }, out: Buffer[]): void {
    this.pending.push(entry);
    this.ownReplies++;
    out.push(buildTarget('D', 'S', entry.serverName));
  }

  /** The server name of the client's statement on this connection, preparing it there if needed. */
  private ensure(clientName: string, server: ServerStatements, out: Buffer[]): string {
    const def = this.defs.get(clientName);
    // Unknown to this client: never let it reach a statement the proxy made for someone else.
    if (!def) return clientName.startsWith(SERVER_STATEMENT_PREFIX) ? ABSENT : clientName;
    const existing = server.use(def.key);
    if (existing !== undefined) {
      // Another statement of the same text serves only in the shape this client knows.
      const shape = server.shapeOf(existing);
      // Not described yet on either side: both were prepared in this same batch, at the same moment.
      if (def.shape === null || shape === def.shape) return existing;
      if (shape === undefined && !this.serverSkipping) {
        // Prepared in this batch, after the client's own: its Describe is on the way; wait for it.
        const describing = this.pending.find((p) => p.kind === 'describe' && p.serverName === existing);
        if (describing !== undefined && describing.kind === 'describe') {
          describing.check = def;
          out.push(FLUSH);
          this.verdict = 'waiting';
          return HELD;
        }
      }
    }
    const { name, evicted } = server.add(def.key);
    this.closeEvicted(evicted, out);
    this.pending.push({ kind: 'parse', ours: true, key: def.key, serverName: name });
    out.push(buildParse(name, def.query, def.paramTypes));
    if (def.shape === null || this.serverSkipping) return name;
    // Prepared again, perhaps after the schema changed: the client's messages
    // wait until the server has said what shape the rows now have (Flush: now).
    this.describeOurs({ kind: 'describe', ours: true, key: def.key, serverName: name, check: def }, out);
    out.push(FLUSH);
    this.verdict = 'waiting';
    return HELD;
  }

  /**
   * The unnamed statement on this connection is whoever parsed it last: a
   * client's Bind("") runs its own, prepared again here if needed, and never
   * another client's.
   */
  private ensureUnnamed(server: ServerStatements, out: Buffer[]): string {
    if (!this.unnamed) return ABSENT;
    if (server.unnamedOwner === this.unnamed) return '';
    server.unnamedOwner = this.unnamed;
    this.pending.push({ kind: 'parse', ours: true });
    out.push(this.unnamed);
    return '';
  }

  private closeEvicted(evicted: string[], out: Buffer[]): void {
    for (const name of evicted) {
      this.pending.push({ kind: 'close', ours: true });
      out.push(buildTarget('C', 'S', name));
    }
  }

  /** SQL-level DEALLOCATE and DISCARD refer to the client's names, and may drop the proxy's. */
  private query(msg: Buffer, server: ServerStatements, out: Buffer[]): void {
    if ((this.sqlWords(msg) & DROP_WORD) === 0) {
      out.push(msg);
      return;
    }
    const sql = readQuery(msg);
    if (!DROPS_STATEMENTS.test(stripSql(sql))) {
      out.push(msg);
      return;
    }
    if (DEALLOCATE_ALL.test(sql) || DISCARD_ALL.test(sql)) {
      this.defs.clear();
      server.clear();
      out.push(msg);
      return;
    }
    const m = DEALLOCATE.exec(sql);
    const def = m ? this.defs.get(unquote(m[1])) : undefined;
    if (m && def) {
      // The server knows the statement by the proxy's name: deallocate that
      // one (preparing it first if this connection lacks it).
      this.defs.delete(unquote(m[1]));
      let name = server.use(def.key);
      if (name === undefined) {
        name = server.add(def.key).name;
        this.pending.push({ kind: 'parse', ours: true, key: def.key, serverName: name });
        out.push(buildParse(name, def.query, def.paramTypes));
      }
      server.forget(def.key, name);
      out.push(buildQuery(`DEALLOCATE "${name}"`));
      return;
    }
    // Anything else that may drop statements (in a multi-statement string,
    // or a SQL-level PREPAREd name): the cache can no longer be trusted.
    server.clear();
    out.push(msg);
  }
}
