// A client's cancels, its CancelRequest and the query timeout's, against
// where its statement is: passed on to the server it runs on; owed while
// it has not reached the server yet (the server would ignore it then);
// answered by the proxy for a batch that never left the queue.
import { countClientError, type ServiceStats } from '../budget/stats.js';
import { clientErrors } from '../errors.js';
import { Backend } from '../protocol/codes.js';
import { errorResponse, readyForQuery } from '../protocol/encode.js';
import type { ServerConnection } from '../server/connection.js';
import type { ServerPool } from '../server/pool.js';
import type { ClientSide } from './clientSide.js';

/** What the cancels read of the server link, and the one thing they ask of it. */
export interface CancelSubject {
  /** Waiting in the queue for a server connection. */
  readonly queued: boolean;
  /** The linked server connection, if any. */
  readonly linkedServer: ServerConnection | null;
  /** The proxy's settings query runs on it ahead of the client's statement: a cancel now would hit it instead. */
  readonly settling: boolean;
  /** The queued batch leaves the queue and `replies` answer it; it never runs. */
  answerQueued(replies: Buffer): void;
}

export class Cancels {
  /**
   * A client's cancel that came before its statement reached the server
   * (queued with its batch still arriving, or held for a shape check); its
   * `done` closes the canceller's connection once it is settled.
   */
  private owed: (() => void) | null = null;

  constructor(
    private readonly pool: ServerPool,
    private readonly link: CancelSubject,
    private readonly client: ClientSide,
    private readonly counters: { stats(): ServiceStats },
  ) {}

  /** A cancel is owed: call settle() whenever the statement may have moved on. */
  get owes(): boolean {
    return this.owed !== null;
  }

  /** A CancelRequest for this client: only a statement in flight is cancelled; `done` once the cancel has reached the server, or will not. */
  request(done: () => void): void {
    const { tx, statementLayer } = this.client;
    if (!tx.cancellable) return done();
    if (this.link.queued) {
      if (this.batchComplete) {
        this.answerQueued();
        return done();
      }
      // The rest of the batch is still coming: answered when it has (settle).
      return this.owe(done);
    }
    const conn = this.link.linkedServer;
    if (!conn) return done();
    // Sent once the settings query has answered, when the statement is what runs.
    if (this.link.settling) return this.owe(done);
    if (statementLayer.held !== null) {
      // The shape check runs now and may wait on a lock, as the statement
      // itself would: it is cancelled at once; the statement, once it goes.
      this.owe(done);
      return this.pool.cancelQuery(conn, () => this.link.linkedServer === conn && statementLayer.held !== null, NOTHING);
    }
    this.pool.cancelQuery(conn, () => this.link.linkedServer === conn && tx.cancellable, done);
  }

  /**
   * queryTimeoutMs: the running statement is cancelled with the server's
   * cancel key, as the client's own cancel would be; the 57014 that comes
   * back is reworded as statement_timeout's (ClientOutbound).
   */
  forTimeout(): void {
    const conn = this.link.linkedServer;
    if (!conn) return;
    const tx = this.client.tx;
    tx.timedOut = true;
    // The reworded error must be seen whole, in session mode too.
    this.client.outbound.trimAll();
    const statement = tx.statementSince;
    this.counters.stats().queryTimeouts++;
    this.pool.cancelQuery(conn, () => this.link.linkedServer === conn && tx.statementSince === statement && tx.expectedReady > 0, NOTHING);
  }

  /**
   * Where an owed cancel stands: answered here if the batch is complete and
   * still queued; sent once the statement is on the server; dropped once
   * nothing of it is left to cancel (or it failed already).
   */
  settle(): void {
    const done = this.owed;
    if (done === null) return;
    if (this.link.queued) {
      if (!this.batchComplete) return;
      this.owed = null;
      this.answerQueued();
      return done();
    }
    const { tx, statementLayer, outbound } = this.client;
    const conn = this.link.linkedServer;
    const inFlight = conn !== null && tx.cancellable;
    if (inFlight && (statementLayer.held !== null || this.link.settling)) return;
    this.owed = null;
    if (!inFlight || outbound.lastType === Backend.ErrorResponse) return done();
    this.pool.cancelQuery(conn, () => this.link.linkedServer === conn && tx.cancellable, done);
  }

  /** The link ends: an owed cancel has nothing left to cancel. */
  drop(): void {
    const done = this.owed;
    this.owed = null;
    done?.();
  }

  private owe(done: () => void): void {
    const earlier = this.owed;
    this.owed = done;
    earlier?.();
  }

  /** Every message of the client's batch is here: a queued batch can be answered whole. */
  private get batchComplete(): boolean {
    return this.client.inbound.atBoundary && !this.client.tx.extendedOpen;
  }

  /**
   * A cancelled batch that is still queued is answered as PostgreSQL
   * answers a cancelled statement: the error, then one ReadyForQuery per
   * Query or Sync it sent.
   */
  private answerQueued(): void {
    const tx = this.client.tx;
    const canceled = clientErrors.queryCanceled();
    countClientError(this.counters.stats(), canceled.code);
    const replies = [errorResponse(canceled)];
    for (let i = 0; i < tx.expectedReady; i++) replies.push(readyForQuery(tx.statusLetter));
    this.link.answerQueued(Buffer.concat(replies));
  }
}

const NOTHING = (): void => {};
