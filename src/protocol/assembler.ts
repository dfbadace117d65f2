// Whole-message framing, for the direction where the proxy must read or
// change message contents (client to server in transaction mode). Messages
// inside one chunk are returned as views of it; only a message that spans
// chunks is copied together.
import { FrameError } from './framing.js';
import { sliceOf } from '../io/views.js';

export class MessageAssembler {
  private parts: Buffer[] = [];
  private have = 0;
  /** Total bytes of the message being collected (type byte included), or -1 while its header is incomplete. */
  private need = -1;

  constructor(private readonly maxMessageBytes = 0x7fffffff) {}

  get atBoundary(): boolean {
    return this.have === 0;
  }

  /**
   * Appends the whole messages that `chunk` completes to `out`; returns a
   * FrameError on a nonsense length (the assembler is then of no further
   * use), else null.
   */
  push(chunk: Buffer, out: Buffer[]): FrameError | null {
    let i = 0;
    const n = chunk.length;
    if (this.have > 0) {
      if (this.need < 0) {
        const take = Math.min(5 - this.have, n);
        this.parts.push(chunk.subarray(0, take));
        this.have += take;
        i = take;
        if (this.have < 5) return null;
        const head = Buffer.concat(this.parts);
        this.parts = [head];
        const length = this.checkedLength(head, 0);
        if (length < 0) return new FrameError(head[0], head.readInt32BE(1));
        this.need = 1 + length;
      }
      const take = Math.min(this.need - this.have, n - i);
      this.parts.push(chunk.subarray(i, i + take));
      this.have += take;
      i += take;
      if (this.have < this.need) return null;
      const msg = Buffer.concat(this.parts, this.need);
      this.parts = [];
      this.have = 0;
      this.need = -1;
      out.push(msg);
    }
    while (i < n) {
      if (n - i < 5) {
        this.parts = [chunk.subarray(i)];
        this.have = n - i;
        this.need = -1;
        return null;
      }
      const length = this.checkedLength(chunk, i);
      if (length < 0) return new FrameError(chunk[i], chunk.readInt32BE(i + 1));
      const total = 1 + length;
      if (n - i < total) {
        this.parts = [chunk.subarray(i)];
        this.have = n - i;
        this.need = total;
        return null;
      }
      // A chunk that is exactly one message (the usual case) is passed on as it is.
      out.push(i === 0 && total === n ? chunk : sliceOf(chunk, i, i + total));
      i += total;
    }
    return null;
  }

  /** The message length at `at`, or -1 when it is nonsense. */
  private checkedLength(buf: Buffer, at: number): number {
    const length = buf.readInt32BE(at + 1);
    return length < 4 || length > this.maxMessageBytes ? -1 : length;
  }
}
