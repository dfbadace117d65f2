// Server replies on their way to a client, with some left out or replaced:
// in transaction mode the proxy sends requests of its own (a Parse before a
// Bind, a Describe to learn a shape, a failing statement that carries
// PostgreSQL's error), and the client must never see their answers.
//
// Header-only framing as FrameScanner; chunks are forwarded as they come,
// except that an unfinished header is held back (a dropped message is never
// half-sent), and, while answers that may be dropped or replaced are due,
// an unfinished message is held back whole.
import { FrameError, FrameScanner } from './framing.js';

/** What onReply returns to leave a message out. */
export const DROP = Buffer.alloc(0);

export interface ReplyListener {
  /**
   * One whole message: its type, its first body byte (-1 when empty), and
   * where it lies, bytes [start, end) of `bytes` (header included). Returns
   * null to forward it, DROP to leave it out, or the bytes to send instead.
   * A message that began in bytes already forwarded has start < 0: it can
   * only be forwarded.
   */
  onReply(type: number, firstBodyByte: number, bytes: Buffer, start: number, end: number): Buffer | null;
  /** Whether answers that may be dropped or replaced are due: unfinished messages are then held back whole. */
  readonly holdsWholeMessages: boolean;
}

const EMPTY = Buffer.alloc(0);

export class ReplyTrimmer {
  private readonly scanner: FrameScanner;
  /** Bytes of an unfinished message (or header) held back from the last chunk. */
  private held: Buffer | null = null;
  /** The bytes being scanned (held bytes, then the chunk), while onReply reads them. */
  private bytes: Buffer = EMPTY;
  private base = 0;
  /** [start, end) ranges of `bytes` to leave out, flattened, in order. */
  private cuts: number[] | null = null;
  /** What goes in place of a cut, by its start. */
  private inserts: Map<number, Buffer> | null = null;

  /** Messages may be left out (transaction mode): unfinished ones are held back; else every chunk goes on as it is. */
  trims = false;

  constructor(private readonly listener: ReplyListener) {
    this.scanner = new FrameScanner((type, first, end) => this.onMessage(type, first, end));
  }

  /** Nothing held back and no message unfinished. */
  get atBoundary(): boolean {
    return this.held === null && this.scanner.atBoundary;
  }

  /** The bytes to forward for this chunk (perhaps none), or the FrameError of a nonsense length. */
  push(chunk: Buffer): Buffer | FrameError {
    const held = this.held;
    this.base = held ? held.length : 0;
    this.cuts = null;
    this.inserts = null;
    let data = held ? Buffer.concat([held, chunk]) : chunk;
    this.bytes = data;
    const error = this.scanner.scan(chunk);
    this.bytes = EMPTY;
    if (error) return error;
    if (this.trims) {
      const scanner = this.scanner;
      const partial = this.listener.holdsWholeMessages ? Math.min(data.length, scanner.pendingMessageBytes) : scanner.pendingHeaderBytes;
      this.held = partial > 0 ? Buffer.from(data.subarray(data.length - partial)) : null;
      if (partial > 0) data = data.subarray(0, data.length - partial);
    }
    return this.cuts === null ? data : spliced(data, this.cuts, this.inserts);
  }

  private onMessage(type: number, first: number, end: number): void {
    const endAt = this.base + end;
    const start = endAt - 1 - this.scanner.messageLength;
    const instead = this.listener.onReply(type, first, this.bytes, start, endAt);
    if (instead === null) return;
    // A bug in the caller, not the peer: the session's error boundary ends the client.
    if (start < 0) throw new Error('a reply to leave out began in bytes already forwarded');
    (this.cuts ??= []).push(start, endAt);
    if (instead.length > 0) (this.inserts ??= new Map()).set(start, instead);
  }
}

/** data without the [start, end) ranges listed in order, each replaced by what `inserts` has for its start. */
function spliced(data: Buffer, ranges: number[], inserts: Map<number, Buffer> | null): Buffer {
  const parts: Buffer[] = [];
  let from = 0;
  for (let i = 0; i < ranges.length; i += 2) {
    parts.push(data.subarray(from, ranges[i]));
    const insert = inserts?.get(ranges[i]);
    if (insert) parts.push(insert);
    from = ranges[i + 1];
  }
  parts.push(data.subarray(from));
  return Buffer.concat(parts);
}
