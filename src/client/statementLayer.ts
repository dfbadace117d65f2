// The statement layer of a transaction-mode session: client messages in,
// bytes for the server out, and the server's replies to the proxy's own
// requests taken out on the way back. It refuses SQL that names the
// proxy's statements, finds session state (to pin, or to refuse), rewrites
// prepared-statement names (prepared.ts), holds messages while a shape
// check is open, and writes the client's own chunk when nothing in it
// changed. Pure: messages in, messages out; no sockets.
import type { OnSessionState } from '../types/config.js';
import { clientErrors } from '../errors.js';
import { Backend, Frontend } from '../protocol/codes.js';
import type { ErrorFields } from '../protocol/encode.js';
import { buildQuery, readParse, readQuery } from '../protocol/messages.js';
import { DROP } from '../protocol/replies.js';
import type { CompletionKind } from './pendingRequests.js';
import { PreparedStatements, raiseStatement } from './prepared.js';
import { SERVER_STATEMENT_PREFIX, type ServerStatements } from './serverStatements.js';
import { detectSessionState, stripSql, type SessionStateReason } from './sessionState.js';
import { DROP_WORD, RESERVED_MARK, SESSION_WORD } from './sqlWords.js';

/** RESET (one parameter or ALL) and DISCARD ALL put settings back to the connection's login values (read on SQL without comments). */
const RESETS_SETTINGS = /(^|;)\s*(reset\s|discard\s+all\b)/i;
/** The words it needs, anywhere: the cheap test before comments are stripped. */
const RESET_WORDS = /reset|discard/i;

/** Where a session counts the errors the proxy itself puts in its stream (refusals, rewordings), by SQLSTATE. */
export interface OwnErrors {
  ownError(sqlstate: string): void;
}

/** For a layer whose errors nobody counts (tests). */
export const UNCOUNTED: OwnErrors = { ownError: () => {} };
const PLAN_CHANGED = clientErrors.cachedPlanChanged().code;

/** In `special`: forwarded without rewriting or counting (a Sync the server ignores). */
const UNTOUCHED = '';

const COMPLETION: Record<number, CompletionKind> = {
  [Backend.ParseComplete]: 'parse',
  [Backend.BindComplete]: 'bind',
  [Backend.CloseComplete]: 'close',
};

const SESSION_STATE_WHAT: Record<SessionStateReason, string> = {
  set: 'SET',
  listen: 'LISTEN',
  advisory_lock: 'a session advisory lock',
  temp_table: 'CREATE TEMP',
  prepare: 'PREPARE',
  cursor_with_hold: 'DECLARE … WITH HOLD',
  load: 'LOAD',
};

export class StatementLayer {
  private readonly prepared = new PreparedStatements();
  /**
   * Held client messages that toServer() must not rewrite: a Sync the server
   * will ignore (UNTOUCHED), or a refused Parse with the SQL that raises its
   * error. Null, and never looked at, in the usual case.
   */
  private special: Map<Buffer, string> | null = null;
  /** The last chunk that was cut into several messages, none replaced; its first and last views and their count. */
  private tile: Buffer | null = null;
  private tileFirst: Buffer | null = null;
  private tileLast: Buffer | null = null;
  private tileCount = 0;
  /**
   * Client messages waiting for a shape check (PreparedStatements.rewrite):
   * a statement was prepared again on this connection, and whether it still
   * returns rows in the shape the client knows is not yet answered.
   */
  held: Buffer[] | null = null;
  /** Bytes of the messages queued behind the one that waits for a shape check. */
  heldBytes = 0;
  /** The session state the last statement check found, where it pins (onSessionState: pin); else null. */
  sessionState: SessionStateReason | null = null;
  /** The last statement checked may reset settings (RESET, DISCARD ALL): the server connection's per-checkout settings are unknown after it. */
  resetsSettings = false;

  constructor(private readonly errors: OwnErrors = UNCOUNTED) {}

  /** A Sync the server ignores (COPY FROM STDIN in progress): passes untouched, uncounted. */
  ignoredSync(msg: Buffer): void {
    (this.special ??= new Map()).set(msg, UNTOUCHED);
  }

  /**
   * A Query or Parse: the message to send instead, or `msg` itself. SQL
   * that names the proxy's statements is refused; session state is refused
   * under onSessionState: error, else reported in `sessionState` (pin).
   */
  check(msg: Buffer, service: string, onSessionState: OnSessionState): Buffer {
    this.sessionState = null;
    this.resetsSettings = false;
    // Most statements name none of the words the checks below need: not even decoded.
    const words = this.prepared.sqlWords(msg);
    if ((words & (SESSION_WORD | RESERVED_MARK | DROP_WORD)) === 0) return msg;
    const isQuery = msg[0] === Frontend.Query;
    const sql = isQuery ? readQuery(msg) : readParse(msg).query;
    // "reset" holds "set", and "discard" is a DROP_WORD: both are seen here.
    if (RESET_WORDS.test(sql) && RESETS_SETTINGS.test(stripSql(sql))) this.resetsSettings = true;
    if ((words & (SESSION_WORD | RESERVED_MARK)) === 0) return msg;
    // The server holds the proxy's statements for everyone on the connection: SQL must not name them.
    if (sql.includes('__') && sql.toLowerCase().includes(SERVER_STATEMENT_PREFIX)) return this.refused(msg, clientErrors.reservedStatementName(SERVER_STATEMENT_PREFIX));
    const reason = detectSessionState(sql);
    if (!reason) return msg;
    if (onSessionState === 'error') return this.refused(msg, clientErrors.sessionStateRefused(service, SESSION_STATE_WHAT[reason]));
    this.sessionState = reason;
    return msg;
  }

  /**
   * A statement replaced by one the server itself fails with our error: a
   * Query by a failing Query; a Parse by the proxy's own unnamed Parse, Bind
   * and Execute (see PreparedStatements.refuse), so the protocol stays in step.
   */
  private refused(msg: Buffer, e: ErrorFields): Buffer {
    this.errors.ownError(e.code);
    const raise = raiseStatement(e.code, e.message, e.hint ?? '');
    if (msg[0] === Frontend.Query) return buildQuery(raise);
    (this.special ??= new Map()).set(msg, raise);
    return msg;
  }

  /** `messages` are all of `chunk`, cut at its message boundaries, none replaced: the chunk may go out as it is. */
  whole(chunk: Buffer, messages: Buffer[]): void {
    this.tile = chunk;
    this.tileFirst = messages[0];
    this.tileLast = messages[messages.length - 1];
    this.tileCount = messages.length;
  }

  /**
   * Bytes for the server for these client messages, with statement names
   * rewritten; null when none go now (all wait behind a shape check).
   */
  toServer(messages: Buffer[], statements: ServerStatements): Buffer | null {
    const waiting = this.held;
    if (waiting !== null) {
      // Behind messages that wait for a shape check: they go after them, in order.
      for (const m of messages) {
        waiting.push(m);
        this.heldBytes += m.length;
      }
      return null;
    }
    const out: Buffer[] = [];
    const special = this.special;
    for (let i = 0; i < messages.length; i++) {
      const m = messages[i];
      if (special !== null && special.has(m)) {
        const refusal = special.get(m)!;
        special.delete(m);
        if (refusal === UNTOUCHED) out.push(m);
        else this.prepared.refuse(refusal, statements, out);
      } else if (!this.prepared.rewrite(m, statements, out)) {
        this.held = messages.slice(i);
        break;
      }
    }
    if (special?.size === 0) this.special = null;
    return this.joined(messages, out);
  }

  /** The shape check that holds messages is answered: call afterShapeCheck(). */
  get answered(): boolean {
    return this.held !== null && this.prepared.shapeVerdict !== 'waiting';
  }

  /**
   * The held messages to send now. If the statement now returns rows in
   * another shape, PostgreSQL would refuse its Bind (or Describe) with 0A000
   * and skip what follows up to the Sync: so does the proxy, with
   * PostgreSQL's own error. Else they go on as sent.
   */
  afterShapeCheck(): Buffer[] {
    const held = this.held!;
    this.held = null;
    this.heldBytes = 0;
    if (this.prepared.shapeVerdict === 'changed' && held.length > 0) this.errors.ownError(PLAN_CHANGED);
    const next = this.prepared.afterShapeCheck(held);
    // Messages PostgreSQL would skip are never sent: nothing is left to do for them.
    const special = this.special;
    if (special !== null && next.length < held.length) for (const m of held) if (!next.includes(m)) special.delete(m);
    return next;
  }

  /**
   * One buffer for the server: the client's own chunk when `out` is exactly
   * the messages that were cut from it (the usual extended-protocol batch),
   * else a copy of them all. Identity, not addresses: the first and last
   * views and the count pin down the tile, since messages keep their order.
   */
  private joined(messages: Buffer[], out: Buffer[]): Buffer | null {
    const tile = this.tile;
    const first = this.tileFirst;
    const last = this.tileLast;
    // Held no longer than one forward: the chunk is not kept alive while the client idles.
    this.tile = this.tileFirst = this.tileLast = null;
    if (out.length === 1) return out[0];
    if (out.length === 0) return null;
    if (tile !== null && out.length === this.tileCount && out[0] === first && out[out.length - 1] === last) {
      let same = out.length === messages.length;
      for (let i = 0; same && i < out.length; i++) same = out[i] === messages[i];
      if (same) return tile;
    }
    return Buffer.concat(out);
  }

  /** While the proxy's own answers are due, server messages are read whole. */
  get expectsOwnReplies(): boolean {
    return this.prepared.expectsOwnReplies;
  }

  /**
   * A server message of the kinds the proxy's own requests are answered
   * with: null forwards it, DROP leaves it out, other bytes replace it.
   */
  reply(type: number, bytes: Buffer, start: number, end: number, statements: ServerStatements): Buffer | null {
    switch (type) {
      case Backend.ParseComplete:
      case Backend.BindComplete:
      case Backend.CloseComplete:
        return this.prepared.onComplete(COMPLETION[type]) ? DROP : null;
      case Backend.ParameterDescription:
      case Backend.RowDescription:
      case Backend.NoData:
        return this.prepared.onDescription(type, bytes, start, end, statements) ? DROP : null;
      case Backend.ErrorResponse:
        // The proxy's failing statement: the client gets the error PostgreSQL itself would send.
        return this.prepared.onError(statements);
    }
    return null;
  }

  readyForQuery(statements: ServerStatements): void {
    this.prepared.onReadyForQuery(statements);
  }

  /** Syncs the server ignored (they were pipelined before a COPY FROM STDIN). */
  dropIgnoredSyncs(n: number): void {
    this.prepared.dropIgnoredSyncs(n);
  }

  /** A server connection is linked: nothing is pending on it from this client. */
  resetPending(): void {
    this.prepared.resetPending();
  }

  /** A queued request was answered by the proxy: none of it goes to a server. */
  reset(): void {
    this.special = null;
    this.prepared.resetPending();
  }
}
