// Named prepared statements across pooled server connections (transaction
// mode). A client's statements are remembered by name; on the server
// connection it holds at the moment, each lives under a proxy-chosen name.
// When the client binds or describes a statement that connection has not
// seen, a Parse is injected first, and the server's ParseComplete for it is
// dropped on the way back, so the client sees exactly the stream it expects
// (what the server is yet to answer, and for whom: pendingRequests.ts).
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
  readBindStatement,
  readParse,
  readQuery,
  readTarget,
  rewriteBindStatement,
} from '../protocol/messages.js';
import { clientErrors } from '../errors.js';
import { errorResponse } from '../protocol/encode.js';
import { PendingRequests, type CompletionKind, type ShapeVerdict, type StatementDef } from './pendingRequests.js';
import { SERVER_STATEMENT_PREFIX, type ServerStatements } from './serverStatements.js';
import { stripSql } from './sessionState.js';
import { DROP_WORD, messageSqlWords } from './sqlWords.js';

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

/** A name no server connection ever has: what unknown client names are sent as. */
const ABSENT = `${SERVER_STATEMENT_PREFIX}absent`;

/** Stand-ins for DEALLOCATE, numbered for the whole process (never reused, so never a clash). */
let standIns = 0;
const NO_PARAMETERS = Buffer.from([0, 0]);
/** Sync ('S'). */
const SYNC = Buffer.from([0x53, 0, 0, 0, 4]);

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
  /** What the server connection is yet to answer, and the shape check held messages wait for. */
  private readonly requests = new PendingRequests();
  /** The held message to refuse with 0A000 when it is rewritten (afterShapeCheck). */
  private refuseNext: Buffer | null = null;
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
        this.requests.bind();
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
        this.requests.close(name, def);
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
        this.requests.sync();
        break;
      case 0x46: // 'F' FunctionCall
        this.requests.ready();
        break;
      case 0x51: // 'Q' Query: also destroys the unnamed statement
        this.unnamed = null;
        server.unnamedOwner = null;
        // Requests the proxy adds for it are answered before its ReadyForQuery.
        this.query(msg, server, out);
        this.requests.ready();
        return true;
    }
    out.push(msg);
    return true;
  }

  // The server's answers are read by the queue of requests it is yet to
  // answer; this client's statements go along where a skipped one is undone.
  onComplete(type: CompletionKind): boolean {
    return this.requests.onComplete(type);
  }

  onDescription(type: number, buf: Buffer, start: number, end: number, server: ServerStatements): boolean {
    return this.requests.onDescription(type, buf, start, end, server);
  }

  onError(server: ServerStatements): Buffer | null {
    return this.requests.onError(server, this.defs);
  }

  onReadyForQuery(server: ServerStatements): void {
    this.wordsOf = null;
    this.requests.onReadyForQuery(server, this.defs);
  }

  dropIgnoredSyncs(n: number): void {
    this.requests.dropIgnoredSyncs(n);
  }

  resetPending(): void {
    this.requests.reset();
  }

  get expectsOwnReplies(): boolean {
    return this.requests.expectsOwnReplies;
  }

  get shapeVerdict(): ShapeVerdict {
    return this.requests.shapeVerdict;
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
    if (this.requests.takeVerdict() !== 'changed' || held.length === 0) return held;
    let next = 1;
    while (next < held.length && held[next][0] !== 0x53) next++;
    this.refuseNext = held[0];
    return [held[0], ...held.slice(next)];
  }

  /**
   * A refused Parse (session state, onSessionState: error) becomes the
   * proxy's own unnamed Parse, Bind and Execute of a statement that raises
   * the error, with their completions dropped: the client gets the error,
   * then the ReadyForQuery of its own Sync, as if the server had refused it.
   */
  refuse(raiseSql: string, server: ServerStatements, out: Buffer[], replacement?: Buffer): void {
    server.unnamedOwner = null;
    this.requests.ownParse();
    this.requests.ownBind();
    // The server's error, raised by a DO block, is replaced by the one PostgreSQL itself would send.
    if (replacement) this.requests.error(replacement);
    out.push(buildParse('', raiseSql, Buffer.from([0, 0])), buildBind('', ''), buildExecute(''));
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
      this.requests.parse();
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
    this.requests.parseNamed(parsed.name, def, name);
    out.push(buildParse(name, def.query, def.paramTypes));
    // The shape PostgreSQL fixes now is the one the client's statement keeps: learned in the same batch.
    this.requests.describe(def, name);
    out.push(buildTarget('D', 'S', name));
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
      // Prepared in this batch, after the client's own: its Describe is on the way; wait for it.
      if (shape === undefined && !this.requests.serverSkipping && this.requests.checkWith(existing, def)) {
        out.push(FLUSH);
        return HELD;
      }
    }
    const { name, evicted } = server.add(def.key);
    this.closeEvicted(evicted, out);
    this.requests.ownParse(def.key, name);
    out.push(buildParse(name, def.query, def.paramTypes));
    if (def.shape === null || this.requests.serverSkipping) return name;
    // Prepared again, perhaps after the schema changed: the client's messages
    // wait until the server has said what shape the rows now have (Flush: now).
    this.requests.describeToCheck(def, name);
    out.push(buildTarget('D', 'S', name), FLUSH);
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
    this.requests.ownParse();
    out.push(this.unnamed);
    return '';
  }

  private closeEvicted(evicted: string[], out: Buffer[]): void {
    for (const name of evicted) {
      this.requests.ownClose();
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
      const name = server.use(def.key);
      if (name !== undefined) {
        server.forget(def.key, name);
        out.push(buildQuery(`DEALLOCATE "${name}"`));
        return;
      }
      // This connection lacks it: a stand-in is prepared and deallocated, so
      // the client gets DEALLOCATE's own answer. All of it in the extended
      // protocol up to a Sync, so that a stand-in the server refuses (in a
      // failed transaction: 25P02, as the DEALLOCATE itself would get) still
      // ends with a ReadyForQuery: a Parse before a simple Query would have
      // the Query skipped, and the client would wait for ever.
      const standIn = `${SERVER_STATEMENT_PREFIX}gone${++standIns}`;
      this.requests.ownParse();
      this.requests.ownParse();
      this.requests.ownBind();
      out.push(
        buildParse(standIn, 'SELECT 1', NO_PARAMETERS),
        buildParse('', `DEALLOCATE "${standIn}"`, NO_PARAMETERS),
        buildBind('', ''),
        buildExecute(''),
        SYNC,
      );
      return;
    }
    // Anything else that may drop statements (in a multi-statement string,
    // or a SQL-level PREPAREd name): the cache can no longer be trusted.
    server.clear();
    out.push(msg);
  }
}
