// A server's replies on their way to the client: framed (protocol/replies.ts),
// fed to the transaction tracker, with the answers to the proxy's own
// requests taken out by the statement layer, and a 57014 from a query
// timeout worded as statement_timeout's. Pure: chunks in, bytes out.
import { clientErrors } from '../errors.js';
import { Backend, TxStatus } from '../protocol/codes.js';
import type { FrameError } from '../protocol/framing.js';
import { rewordError } from '../protocol/messages.js';
import { ReplyTrimmer, type ReplyListener } from '../protocol/replies.js';
import type { ServerStatements } from './serverStatements.js';
import type { OwnErrors, StatementLayer } from './statementLayer.js';
import type { TransactionTracker } from './transaction.js';

const QUERY_CANCELED = '57014';
const STATEMENT_TIMEOUT = clientErrors.statementTimeout();

export class ClientOutbound implements ReplyListener {
  private readonly trimmer: ReplyTrimmer;
  /** The proxy's statements on the linked server connection (transaction mode), else null. */
  serverStatements: ServerStatements | null = null;
  /** The type of the last server message; 0 before any. */
  lastType = 0;
  /** ReadyForQuery messages with status idle seen so far (transactions ended). */
  transactions = 0;
  private now = 0;

  constructor(
    private readonly tx: TransactionTracker,
    private readonly statements: StatementLayer,
    private readonly errors: OwnErrors,
  ) {
    this.trimmer = new ReplyTrimmer(this);
  }

  /** Every message is seen (transaction mode, or a reworded error due in session mode). */
  trimAll(): void {
    this.trimmer.trims = true;
  }

  get atBoundary(): boolean {
    return this.trimmer.atBoundary;
  }

  /** The bytes for the client, or the framing error found. */
  push(chunk: Buffer, now: number): Buffer | FrameError {
    this.now = now;
    this.tx.serverSpoke(now);
    return this.trimmer.push(chunk);
  }

  /** ReplyListener: while the proxy's own answers are due, they are read whole. */
  get holdsWholeMessages(): boolean {
    return this.statements.expectsOwnReplies || this.tx.timedOut;
  }

  /** ReplyListener: one server message; null forwards it, DROP leaves it out, other bytes replace it. */
  onReply(type: number, first: number, bytes: Buffer, start: number, end: number): Buffer | null {
    this.lastType = type;
    const statements = this.serverStatements;
    switch (type) {
      case Backend.ParseComplete:
      case Backend.BindComplete:
      case Backend.CloseComplete:
      case Backend.ParameterDescription:
      case Backend.RowDescription:
      case Backend.NoData:
        return statements ? this.statements.reply(type, bytes, start, end, statements) : null;
      case Backend.ErrorResponse: {
        // The proxy's failing statement: the client gets the error PostgreSQL itself would send.
        const instead = statements ? this.statements.reply(type, bytes, start, end, statements) : null;
        if (instead !== null || !this.tx.timedOut || start < 0) return instead;
        const reworded = rewordError(bytes, start, end, QUERY_CANCELED, STATEMENT_TIMEOUT.message);
        if (reworded !== null) this.errors.ownError(STATEMENT_TIMEOUT.code);
        return reworded;
      }
      case Backend.ReadyForQuery:
        if (statements) this.statements.readyForQuery(statements);
        this.tx.ready(first, this.now);
        if (first === TxStatus.Idle) this.transactions++;
        break;
      case Backend.CopyInResponse:
        // Syncs the client pipelined after the Execute that started this COPY
        // are ignored by the server: they will get no ReadyForQuery.
        this.statements.dropIgnoredSyncs(this.tx.copyIn());
        break;
      case Backend.CopyOutResponse:
      case Backend.CopyBothResponse:
        this.tx.copyOut();
        break;
    }
    return null;
  }
}
