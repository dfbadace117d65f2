// Header-only framing: every v3 message after startup is a 1-byte type and a
// 4-byte big-endian length that counts itself but not the type byte. The
// scanner reads only those 5 bytes (plus the first body byte, which carries
// ReadyForQuery's status) and skips bodies, so the proxy can forward the
// original chunks untouched. State survives chunk boundaries: a header, or
// the status byte, may arrive split across chunks.

export const HEADER_BYTES = 5;

/** Called once per message, when its last byte has been scanned. */
export type MessageHandler = (type: number, firstBodyByte: number, endOffset: number) => void;

/** A nonsense message length: returned, not thrown, by the scanners. */
export class FrameError extends Error {
  constructor(readonly type: number, readonly length: number) {
    super(`invalid message length ${length} for message type 0x${type.toString(16)}`);
  }
  override readonly name = 'FrameError';
}

export class FrameScanner {
  /** Header bytes collected so far of the message being read (0..4 between chunks). */
  private headerFill = 0;
  /** The length of a split header, accumulated byte by byte (no buffer per scanner). */
  private partialLength = 0;
  /** Body bytes of the current message not yet seen. */
  private remaining = 0;
  private type = 0;
  /** The length field of the message being read (or last reported). */
  private length = 0;
  private firstByte = -1;
  private bodyStarted = false;

  constructor(
    private readonly onMessage: MessageHandler,
    private readonly maxMessageBytes = 0x7fffffff,
  ) {}

  /** True when the scanned bytes end exactly at a message boundary. */
  get atBoundary(): boolean {
    return this.headerFill === 0 && this.remaining === 0;
  }

  /** Header bytes of an unfinished header held at the end of the last chunk. */
  get pendingHeaderBytes(): number {
    return this.headerFill;
  }

  /** Bytes seen so far of an unfinished message (header included), over all chunks. */
  get pendingMessageBytes(): number {
    if (this.headerFill > 0) return this.headerFill;
    return this.remaining > 0 ? this.length + 1 - this.remaining : 0;
  }

  /** The length field of the message just reported to onMessage (its bytes are 1 + this). */
  get messageLength(): number {
    return this.length;
  }

  /**
   * Scans a chunk; returns a FrameError on a nonsense length (the scanner is
   * then of no further use), else null. Throws only what onMessage throws.
   */
  scan(chunk: Buffer): FrameError | null {
    const n = chunk.length;
    let i = 0;
    while (i < n) {
      if (this.remaining > 0) {
        const take = Math.min(this.remaining, n - i);
        if (!this.bodyStarted) {
          this.firstByte = chunk[i];
          this.bodyStarted = true;
        }
        i += take;
        this.remaining -= take;
        if (this.remaining === 0) this.onMessage(this.type, this.firstByte, i);
        continue;
      }
      let length: number;
      if (this.headerFill === 0 && n - i >= HEADER_BYTES) {
        this.type = chunk[i];
        length = chunk.readInt32BE(i + 1);
        i += HEADER_BYTES;
      } else {
        // A header split across chunks: type byte first, then the length big-endian.
        while (i < n && this.headerFill < HEADER_BYTES) {
          const byte = chunk[i++];
          if (this.headerFill === 0) {
            this.type = byte;
            this.partialLength = 0;
          } else {
            this.partialLength = this.partialLength * 256 + byte;
          }
          this.headerFill++;
        }
        if (this.headerFill < HEADER_BYTES) return null;
        this.headerFill = 0;
        length = this.partialLength | 0; // as int32, like readInt32BE
      }
      if (length < 4 || length > this.maxMessageBytes) return new FrameError(this.type, length);
      this.length = length;
      this.remaining = length - 4;
      this.firstByte = -1;
      this.bodyStarted = false;
      if (this.remaining === 0) this.onMessage(this.type, -1, i);
    }
    return null;
  }
}
