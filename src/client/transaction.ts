// Where a client and its server connection are in the protocol, from the
// message types of both directions alone: whether the server owes replies,
// whether a transaction, an extended-protocol batch or a COPY is open, and
// why the client is pinned to its server connection. It says when the
// server connection may be released (transaction mode) and whose turn it is
// (idle timeouts). Pure: types in, answers out; no sockets, no clock.
import { Frontend, TxStatus } from '../protocol/codes.js';
import type { SessionStateReason } from './sessionState.js';

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

  /**
   * A message from the client. Returns true when it is the first the server
   * now owes a reply to (a statement starts running).
   */
  client(type: number): boolean {
    switch (type) {
      case Frontend.Query:
        this.syncsSinceExecute = 0;
        return this.expectedReady++ === 0;
      case Frontend.FunctionCall:
        return this.expectedReady++ === 0;
      case Frontend.Sync:
        if (this.clientCopyIn) return false; // ignored by the server during COPY FROM STDIN
        this.syncsSinceExecute++;
        this.extendedOpen = false;
        return this.expectedReady++ === 0;
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

  /** ReadyForQuery with its status byte; returns whether another statement is in line. */
  ready(status: number): boolean {
    if (this.expectedReady > 0) this.expectedReady--;
    this.txStatus = status;
    this.inCopy = false;
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
