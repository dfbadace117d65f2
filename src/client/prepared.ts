// Named prepared statements across pooled server connections (transaction
// mode). A client's statements are remembered by name; on the server
// connection it holds at the moment, each lives under a proxy-chosen name.
// When the client binds or describes a statement that connection has not
// seen, a Parse is injected first, and the server's ParseComplete for it is
// dropped on the way back, so the client sees exactly the stream it expects.
// Pure: messages in, messages out.
import {
  buildBind,
  buildExecute,
  buildParse,
  buildQuery,
  buildTarget,
  readBindStatement,
  readParse,
  readQuery,
  readTarget,
  rewriteBindStatement,
} from '../protocol/messages.js';
import { SERVER_STATEMENT_PREFIX, type ServerStatements } from '../server/statements.js';
import { stripSql } from './sessionState.js';
import { DROP_WORD, messageSqlWords } from './sqlWords.js';

interface StatementDef {
  query: string;
  paramTypes: Buffer;
  /** Identity of the statement on any server connection: text and parameter types. */
  key: string;
}

/** A request still waiting for its ParseComplete/BindComplete/CloseComplete, or the end of a batch. */
type Pending =
  | { kind: 'parse'; ours: boolean; key?: string; serverName?: string; clientName?: string; def?: StatementDef }
  | { kind: 'bind'; ours: boolean }
  | { kind: 'close'; ours: boolean }
  | { kind: 'ready' };

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
   * statements are `server`; returns the messages to send in its place.
   */
  rewrite(msg: Buffer, server: ServerStatements, out: Buffer[]): void {
    switch (msg[0]) {
      case 0x50: // 'P' Parse
        return this.parse(msg, server, out);
      case 0x42: {
        // 'B' Bind
        // Unnamed portal and statement (most drivers' default): nothing to decode.
        const statement = msg[5] === 0 && msg[6] === 0 ? '' : readBindStatement(msg).statement;
        const name = statement === '' ? this.ensureUnnamed(server, out) : this.ensure(statement, server, out);
        this.pending.push(BIND);
        out.push(name === statement ? msg : rewriteBindStatement(msg, name));
        return;
      }
      case 0x44: {
        // 'D' Describe
        if (msg[5] !== 0x53) break; // a portal: names nothing of ours
        const { name } = readTarget(msg);
        const target = name === '' ? this.ensureUnnamed(server, out) : this.ensure(name, server, out);
        out.push(target === name ? msg : buildTarget('D', 'S', target));
        return;
      }
      case 0x43: {
        // 'C' Close: the client's name goes away; the server keeps its copy
        // cached for others. Closing an absent name still yields CloseComplete.
        const { kind, name } = readTarget(msg);
        this.pending.push(CLOSE);
        if (kind !== 'S') break;
        if (name === '') {
          // The server's unnamed statement may be another client's: only ours is closed.
          const ours = this.unnamed !== null && server.unnamedOwner === this.unnamed;
          this.unnamed = null;
          if (!ours) {
            out.push(buildTarget('C', 'S', ABSENT));
            return;
          }
          server.unnamedOwner = null;
          break;
        }
        this.defs.delete(name);
        out.push(buildTarget('C', 'S', ABSENT));
        return;
      }
      case 0x53: // 'S' Sync
      case 0x46: // 'F' FunctionCall
        this.pending.push(READY);
        break;
      case 0x51: // 'Q' Query: also destroys the unnamed statement
        this.pending.push(READY);
        this.unnamed = null;
        server.unnamedOwner = null;
        return this.query(msg, server, out);
    }
    out.push(msg);
  }

  /**
   * The server sent ParseComplete ('1') or CloseComplete ('3'): true when it
   * answers a message the proxy injected, so it must not reach the client.
   */
  onComplete(type: CompletionKind): boolean {
    const i = this.pending.length > 0 && this.pending[0].kind !== 'ready' ? 0 : this.pending.findIndex((p) => p.kind !== 'ready');
    if (i < 0) return false;
    const p = i === 0 ? this.pending.shift()! : this.pending.splice(i, 1)[0];
    if (p.kind !== type) return false; // out of step: forward, never swallow what the client may need
    return p.ours;
  }

  /**
   * A refused Parse (session state, onSessionState: error) becomes the
   * proxy's own unnamed Parse, Bind and Execute of a statement that raises
   * the error, with their completions dropped: the client gets the error,
   * then the ReadyForQuery of its own Sync, as if the server had refused it.
   */
  refuse(raiseSql: string, server: ServerStatements, out: Buffer[]): void {
    server.unnamedOwner = null;
    this.pending.push({ kind: 'parse', ours: true }, { kind: 'bind', ours: true });
    out.push(buildParse('', raiseSql, Buffer.from([0, 0])), buildBind('', ''), buildExecute(''));
  }

  /**
   * An ErrorResponse: the server skips the rest of the batch, so requests
   * before the next ReadyForQuery get no completion. Statements whose Parse
   * was skipped or failed are forgotten.
   */
  onError(server: ServerStatements): void {
    const end = this.pending.findIndex((p) => p.kind === 'ready');
    this.forgetSkipped(this.pending.splice(0, end < 0 ? this.pending.length : end), server);
  }

  private forgetSkipped(skipped: Pending[], server: ServerStatements): void {
    for (const p of skipped) {
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
    const def: StatementDef = { query: parsed.query, paramTypes, key: keyOf(parsed.query, paramTypes) };
    this.defs.set(parsed.name, def);
    const { name, evicted } = server.add(def.key);
    this.closeEvicted(evicted, out);
    this.pending.push({ kind: 'parse', ours: false, key: def.key, serverName: name, clientName: parsed.name, def });
    out.push(buildParse(name, def.query, def.paramTypes));
  }

  /** The server name of the client's statement on this connection, preparing it there if needed. */
  private ensure(clientName: string, server: ServerStatements, out: Buffer[]): string {
    const def = this.defs.get(clientName);
    // Unknown to this client: never let it reach a statement the proxy made for someone else.
    if (!def) return clientName.startsWith(SERVER_STATEMENT_PREFIX) ? ABSENT : clientName;
    const existing = server.use(def.key);
    if (existing !== undefined) return existing;
    const { name, evicted } = server.add(def.key);
    this.closeEvicted(evicted, out);
    this.pending.push({ kind: 'parse', ours: true, key: def.key, serverName: name });
    out.push(buildParse(name, def.query, def.paramTypes));
    return name;
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
