// Where a client and its server connection are in the protocol, from the
// message types of both directions alone: whether the server owes replies,
// whether a transaction, an extended-protocol batch or a COPY is open, and
// why the client is pinned to its server connection. It says when the
// server connection may be released (transaction mode), whose turn it is,
// and which timeout is due. Pure: types and times in, answers out; no
// sockets, no clock of its own.
import { Frontend, TxStatus } from '../protocol/codes.js';
import type { SessionStateReason } from './sessionState.js';

/** Timeouts in ms, 0 for off (config: clientIdleTimeoutMs, idleInTransactionTimeoutMs, queryTimeoutMs). */
export interface SessionTimeouts {
  readonly clientIdleTimeoutMs: number;
  readonly idleInTransactionTimeoutMs: number;
  readonly queryTimeoutMs: number;
}

export type DueTimeout = 'client_idle_timeout' | 'idle_in_transaction_timeout' | 'query_timeout';

/** A timeout that is on (over 0) and has run out since `since`. */
function expired(limitMs: number, since: number, now: number): boolean {
  return limitMs > 0 && now - since >= limitMs;
}

export class TransactionTracker {
  /** ReadyForQuery messages still owed by the server (one per Query, Sync, FunctionCall). */
  expectedReady = 0;
  /** The transaction status of the last ReadyForQuery (TxStatus). */
  txStatus: number = TxStatus.Idle;
  /** Extended-protocol messages sent since the last Sync. */
  extendedOpen = false;
  /** A COPY is running (from its response to the next ReadyForQuery). */
  inCopy = false;
  /** Syncs sent since the last Execute or Query: ignored by the server if that started a COPY FROM STDIN. */
  private syncsSinceExecute = 0;
  /** Between the server's CopyInResponse and the client's CopyDone/CopyFail: Syncs are ignored. */
  clientCopyIn = false;
  /** A framing error on either side: the server connection's position is unknown. */
  poisoned = false;
  /** Why this client is pinned to its server connection (session state), or null. */
  pinned: SessionStateReason | null = null;
  /** When the client last sent something or the server last became ready (ms since the epoch): idle timeouts count from here. */
  quietSince = 0;
  /** When the statement now running on the server was sent or became next in line; 0 when none runs. */
  statementSince = 0;
  /** The query timeout cancelled the running statement (its 57014 is reworded); until the next ReadyForQuery. */
  timedOut = false;

  /** The client sent bytes. */
  heard(now: number): void {
    this.quietSince = now;
  }

  /** The server sent bytes: answers to a batch the client has not ended with a Sync are the server's turn, not an idle client. */
  serverSpoke(now: number): void {
    if (this.extendedOpen) this.quietSince = now;
  }

  /** A server connection is linked: time spent in the queue is not the statement's. */
  linked(now: number): void {
    if (this.statementSince !== 0) this.statementSince = now;
  }

  /**
   * Which timeout has run out, if any; `linked`: a server connection is
   * held. Idle timeouts come first: they end the session.
   */
  due(limits: SessionTimeouts, now: number, linked: boolean): DueTimeout | null {
    const clientsTurn = this.clientsTurn;
    if (this.inTransaction(linked)) {
      if (clientsTurn && expired(limits.idleInTransactionTimeoutMs, this.quietSince, now)) return 'idle_in_transaction_timeout';
    } else if (clientsTurn && !this.extendedOpen && expired(limits.clientIdleTimeoutMs, this.quietSince, now)) {
      return 'client_idle_timeout';
    }
    if (this.statementSince !== 0 && !this.timedOut && linked && expired(limits.queryTimeoutMs, this.statementSince, now)) return 'query_timeout';
    return null;
  }

  /**
   * A message from the client. Returns true when it is the first the server
   * now owes a reply to (a statement starts running).
   */
  client(type: number): boolean {
    switch (type) {
      case Frontend.Query:
        this.syncsSinceExecute = 0;
        return this.owe();
      case Frontend.FunctionCall:
        return this.owe();
      case Frontend.Sync:
        if (this.clientCopyIn) return false; // ignored by the server during COPY FROM STDIN
        this.syncsSinceExecute++;
        this.extendedOpen = false;
        return this.owe();
      case Frontend.Execute:
        this.syncsSinceExecute = 0;
        this.extendedOpen = true;
        return false;
      case Frontend.Parse:
      case Frontend.Bind:
      case Frontend.Describe:
      case Frontend.Close:
      case Frontend.Flush:
        this.extendedOpen = true;
        return false;
      case Frontend.CopyDone:
      case Frontend.CopyFail:
        this.clientCopyIn = false;
        return false;
    }
    return false;
  }

  /** One more ReadyForQuery owed; true when it is the first (a statement starts running). */
  private owe(): boolean {
    if (this.expectedReady++ !== 0) return false;
    this.statementSince = this.quietSince;
    return true;
  }

  /** ReadyForQuery with its status byte; returns whether another statement is in line. */
  ready(status: number, now: number): boolean {
    if (this.expectedReady > 0) this.expectedReady--;
    this.txStatus = status;
    this.inCopy = false;
    // The next statement in line starts now; the idle timeouts count from here when none is.
    this.quietSince = now;
    this.statementSince = this.expectedReady > 0 ? now : 0;
    this.timedOut = false;
    return this.expectedReady > 0;
  }

  /**
   * CopyInResponse: Syncs the client pipelined after the Execute that
   * started this COPY are ignored by the server and get no ReadyForQuery.
   * Returns how many.
   */
  copyIn(): number {
    const ignored = this.syncsSinceExecute;
    this.expectedReady = Math.max(0, this.expectedReady - ignored);
    this.syncsSinceExecute = 0;
    this.clientCopyIn = true;
    this.inCopy = true;
    return ignored;
  }

  /** CopyOutResponse or CopyBothResponse. */
  copyOut(): void {
    this.inCopy = true;
  }

  /** A cancelled queued request is answered by the proxy: nothing is owed any more. */
  answered(): void {
    this.expectedReady = 0;
    this.statementSince = 0;
  }

  /** Pins the client; true the first time. */
  pin(reason: SessionStateReason): boolean {
    if (this.pinned) return false;
    this.pinned = reason;
    return true;
  }

  /** Nothing owed, no transaction, batch or COPY open, and the position known. */
  get quiet(): boolean {
    return !this.poisoned && this.expectedReady === 0 && this.txStatus === TxStatus.Idle && !this.extendedOpen && !this.inCopy;
  }

  /**
   * The client has a statement out that a cancel may end: replies are owed,
   * or an extended batch is open (an Execute runs before its Sync comes).
   */
  get cancellable(): boolean {
    return this.expectedReady > 0 || this.extendedOpen;
  }

  /** The server owes nothing: it is the client's turn (idle timeouts count). */
  get clientsTurn(): boolean {
    return this.expectedReady === 0 && !this.inCopy;
  }

  /** Idle in transaction: one is open, or (while linked) an extended batch awaits its Sync and holds the connection as one would. */
  inTransaction(linked: boolean): boolean {
    return this.txStatus !== TxStatus.Idle || (this.extendedOpen && linked);
  }

  /** The ReadyForQuery status letter for the proxy's own answers. */
  get statusLetter(): 'I' | 'T' | 'E' {
    return this.txStatus === TxStatus.InTransaction ? 'T' : this.txStatus === TxStatus.Failed ? 'E' : 'I';
  }
}
