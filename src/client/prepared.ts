// Named prepared statements across pooled server connections (transaction
// mode). A client's statements are remembered by name; on the server
// connection it holds at the moment, each lives under a proxy-chosen name.
// When the client binds or describes a statement that connection has not
// seen, a Parse is injected first, and the server's ParseComplete for it is
// dropped on the way back, so the client sees exactly the stream it expects.
// Pure: messages in, messages out.
import {
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

interface StatementDef {
  query: string;
  paramTypes: Buffer;
  /** Identity of the statement on any server connection: text and parameter types. */
  key: string;
}

/** A request still waiting for its ParseComplete/CloseComplete, or the end of a batch. */
type Pending =
  | { kind: 'parse'; ours: boolean; key?: string; serverName?: string; clientName?: string; def?: StatementDef }
  | { kind: 'close'; ours: boolean }
  | { kind: 'ready' };

/** A name no server connection ever has: what unknown client names are sent as. */
const ABSENT = `${SERVER_STATEMENT_PREFIX}absent`;

const DEALLOCATE = /^\s*deallocate\s+(?:prepare\s+)?("(?:[^"]|"")+"|[^\s;]+)\s*;?\s*$/i;
const DEALLOCATE_ALL = /^\s*deallocate\s+(?:prepare\s+)?all\s*;?\s*$/i;
const DISCARD_ALL = /^\s*discard\s+all\s*;?\s*$/i;

function firstNonSpace(buf: Buffer, from: number): number {
  let i = from;
  while (i < buf.length && (buf[i] === 0x20 || buf[i] === 0x0a || buf[i] === 0x0d || buf[i] === 0x09)) i++;
  return i - from;
}

function keyOf(query: string, paramTypes: Buffer): string {
  return `${paramTypes.toString('hex')}:${query}`;
}

function unquote(identifier: string): string {
  return identifier.startsWith('"') ? identifier.slice(1, -1).replace(/""/g, '"') : identifier.toLowerCase();
}

export class PreparedStatements {
  private readonly defs = new Map<string, StatementDef>();
  private pending: Pending[] = [];

  /** How many statements the client has prepared (for tests and status). */
  get count(): number {
    return this.defs.size;
  }

  /**
   * Rewrites one whole client message for the server connection whose
   * statements are `server`; returns the messages to send in its place.
   */
  rewrite(msg: Buffer, server: ServerStatements): Buffer[] {
    switch (msg[0]) {
      case 0x50: // 'P' Parse
        return this.parse(msg, server);
      case 0x42: {
        // 'B' Bind
        const { statement } = readBindStatement(msg);
        if (statement === '') return [msg];
        const out: Buffer[] = [];
        const name = this.ensure(statement, server, out);
        out.push(rewriteBindStatement(msg, name));
        return out;
      }
      case 0x44: {
        // 'D' Describe
        const { kind, name } = readTarget(msg);
        if (kind !== 'S' || name === '') return [msg];
        const out: Buffer[] = [];
        out.push(buildTarget('D', 'S', this.ensure(name, server, out)));
        return out;
      }
      case 0x43: {
        // 'C' Close: the client's name goes away; the server keeps its copy
        // cached for others. Closing an absent name still yields CloseComplete.
        const { kind, name } = readTarget(msg);
        this.pending.push({ kind: 'close', ours: false });
        if (kind !== 'S' || name === '') return [msg];
        this.defs.delete(name);
        return [buildTarget('C', 'S', ABSENT)];
      }
      case 0x53: // 'S' Sync
      case 0x46: // 'F' FunctionCall
        this.pending.push({ kind: 'ready' });
        return [msg];
      case 0x51: // 'Q' Query
        this.pending.push({ kind: 'ready' });
        return this.query(msg, server);
      default:
        return [msg];
    }
  }

  /**
   * The server sent ParseComplete ('1') or CloseComplete ('3'): true when it
   * answers a message the proxy injected, so it must not reach the client.
   */
  onComplete(type: 'parse' | 'close', server: ServerStatements): boolean {
    const i = this.pending.findIndex((p) => p.kind !== 'ready');
    if (i < 0) return false;
    const [p] = this.pending.splice(i, 1);
    if (p.kind !== type) return false; // out of step: forward, never swallow what the client may need
    void server;
    return p.ours;
  }

  /**
   * An ErrorResponse: the server skips the rest of the batch, so requests
   * before the next ReadyForQuery get no completion. Statements whose Parse
   * was skipped or failed are forgotten.
   */
  onError(server: ServerStatements): void {
    const end = this.pending.findIndex((p) => p.kind === 'ready');
    const skipped = this.pending.splice(0, end < 0 ? this.pending.length : end);
    for (const p of skipped) {
      if (p.kind !== 'parse') continue;
      if (p.key && p.serverName) server.forget(p.key, p.serverName);
      if (p.clientName && p.def && this.defs.get(p.clientName) === p.def) this.defs.delete(p.clientName);
    }
  }

  onReadyForQuery(): void {
    const end = this.pending.findIndex((p) => p.kind === 'ready');
    this.pending.splice(0, end + 1);
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
    this.pending = [];
  }

  private parse(msg: Buffer, server: ServerStatements): Buffer[] {
    const parsed = readParse(msg);
    if (parsed.name === '') {
      this.pending.push({ kind: 'parse', ours: false });
      return [msg];
    }
    // A name reused with other text is simply redefined: prepared afresh.
    const def: StatementDef = { query: parsed.query, paramTypes: parsed.paramTypes, key: keyOf(parsed.query, parsed.paramTypes) };
    this.defs.set(parsed.name, def);
    const out: Buffer[] = [];
    const { name, evicted } = server.add(def.key);
    this.closeEvicted(evicted, out);
    this.pending.push({ kind: 'parse', ours: false, key: def.key, serverName: name, clientName: parsed.name, def });
    out.push(buildParse(name, def.query, def.paramTypes));
    return out;
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

  private closeEvicted(evicted: string[], out: Buffer[]): void {
    for (const name of evicted) {
      this.pending.push({ kind: 'close', ours: true });
      out.push(buildTarget('C', 'S', name));
    }
  }

  /** SQL-level DEALLOCATE and DISCARD ALL refer to the client's names. */
  private query(msg: Buffer, server: ServerStatements): Buffer[] {
    // Only DEALLOCATE and DISCARD concern us: look at the first letter before decoding.
    const first = msg[5 + firstNonSpace(msg, 5)] | 0x20;
    if (first !== 0x64 /* d */) return [msg];
    const sql = readQuery(msg);
    if (DEALLOCATE_ALL.test(sql) || DISCARD_ALL.test(sql)) {
      this.defs.clear();
      server.clear();
      return [msg];
    }
    const m = DEALLOCATE.exec(sql);
    if (m && this.defs.has(unquote(m[1]))) {
      // The server knows the statement by another name; DEALLOCATE ALL gives
      // the client its DEALLOCATE reply, and the cache starts afresh.
      this.defs.delete(unquote(m[1]));
      server.clear();
      return [buildQuery('DEALLOCATE ALL')];
    }
    return [msg];
  }
}
