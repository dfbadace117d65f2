// A client's bytes on their way in, before any server connection sees them:
// framed, fed to the transaction tracker, and cut at a Terminate. In
// session mode only headers are scanned and whole headers forwarded; in
// transaction mode whole messages are put together, checked before anything
// reads them, and passed through the statement layer. Pure: chunks in,
// bytes or messages out.
import type { OnSessionState } from '../types/config.js';
import { Frontend } from '../protocol/codes.js';
import { MessageAssembler } from '../protocol/assembler.js';
import { FrameScanner } from '../protocol/framing.js';
import { frontendProblem } from '../protocol/messages.js';
import type { SessionStateReason } from './sessionState.js';
import type { StatementLayer } from './statementLayer.js';
import type { TransactionTracker } from './transaction.js';

const EMPTY = Buffer.alloc(0);

export class ClientInbound {
  /** After a read: a Terminate came; nothing after it goes anywhere. */
  terminated = false;
  /** After a read (transaction mode): session state that pins the client, or null. */
  pinReason: SessionStateReason | null = null;
  /** Some message read may reset settings (RESET, DISCARD ALL): set until the link has seen it. */
  resetsSettings = false;
  /** Session mode: an unfinished message header at the end of the last chunk, held back. */
  private heldHeader: Buffer | null = null;
  /** Offset just past a Terminate in the chunk being scanned, or -1. */
  private terminateEnd = -1;
  private readonly scanner: FrameScanner;
  /** Transaction mode: client messages are read whole, not just framed. */
  private assembler: MessageAssembler | null = null;

  constructor(
    private readonly tx: TransactionTracker,
    private readonly statements: StatementLayer,
    private readonly maxMessageBytes: number,
  ) {
    this.scanner = new FrameScanner((type, _first, end) => this.onHeader(type, end), maxMessageBytes);
  }

  /** Transaction mode: from now on messages are read whole. */
  readWhole(): void {
    this.assembler = new MessageAssembler(this.maxMessageBytes);
  }

  get whole(): boolean {
    return this.assembler !== null;
  }

  /** No message is partly read. */
  get atBoundary(): boolean {
    return this.assembler !== null ? this.assembler.atBoundary : this.scanner.atBoundary && this.heldHeader === null;
  }

  private onHeader(type: number, end: number): void {
    // Nothing after a Terminate is sent, so nothing after it is owed a reply.
    if (this.terminateEnd >= 0) return;
    if (type === Frontend.Terminate) this.terminateEnd = end;
    else this.tx.client(type);
  }

  /**
   * Session mode: the bytes to forward, whole headers only, so that a
   * Terminate is never half-sent to a server connection that another
   * client will use next. A string: the protocol violation found.
   */
  readBytes(chunk: Buffer): Buffer | string {
    this.terminateEnd = -1;
    const frameError = this.scanner.scan(chunk);
    if (frameError) return frameError.message;
    const held = this.heldHeader;
    let data = held ? Buffer.concat([held, chunk]) : chunk;
    if (this.terminateEnd >= 0) {
      this.terminated = true;
      this.heldHeader = null;
      return data.subarray(0, (held?.length ?? 0) + this.terminateEnd - 5);
    }
    const partial = this.scanner.pendingHeaderBytes;
    if (partial === 0) {
      this.heldHeader = null;
      return data;
    }
    this.heldHeader = Buffer.from(data.subarray(data.length - partial));
    data = data.subarray(0, data.length - partial);
    return data.length > 0 ? data : EMPTY;
  }

  /**
   * Transaction mode: the whole messages in this chunk, each checked, with
   * statements the statement layer replaces already replaced. A string: the
   * protocol violation found.
   */
  readMessages(chunk: Buffer, service: string, onSessionState: OnSessionState): Buffer[] | string {
    this.pinReason = null;
    const messages: Buffer[] = [];
    const assembler = this.assembler!;
    const fromBoundary = assembler.atBoundary;
    const frameError = assembler.push(chunk, messages);
    if (frameError) return frameError.message;
    let replaced = false;
    for (let i = 0; i < messages.length; i++) {
      const msg = messages[i];
      const type = msg[0];
      if (type === Frontend.Terminate) {
        this.terminated = true;
        messages.length = i; // nothing after a Terminate is sent
        break;
      }
      // Checked before anything reads it: a malformed message ends the client, with its reason.
      const problem = frontendProblem(msg);
      if (problem !== null) return problem;
      const ignoredSync = type === Frontend.Sync && this.tx.clientCopyIn;
      this.tx.client(type);
      if (ignoredSync) {
        // The server ignores it during COPY FROM STDIN: passes untouched, uncounted.
        this.statements.ignoredSync(msg);
      } else if (type === Frontend.Query || type === Frontend.Parse) {
        const checked = this.statements.check(msg, service, onSessionState);
        if (checked !== msg) {
          messages[i] = checked;
          replaced = true;
        } else if (this.statements.sessionState !== null) {
          this.pinReason ??= this.statements.sessionState;
        }
        if (this.statements.resetsSettings) this.resetsSettings = true;
      }
    }
    // Several messages that make up the whole chunk, none replaced: if they
    // also go out unchanged, the chunk itself is written.
    if (messages.length > 1 && fromBoundary && assembler.atBoundary && !this.terminated && !replaced) {
      this.statements.whole(chunk, messages);
    }
    return messages;
  }
}
