// Whole-message framing, for the direction where the proxy must read or
// change message contents (client to server in transaction mode). Messages
// inside one chunk are returned as views of it; only a message that spans
// chunks is copied together.
import { FrameError } from './framing.js';
import { sliceOf } from './views.js';

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
   * Appends the whole messages that `chunk` completes to `out`; throws
   * FrameError on a nonsense length.
   */
  push(chunk: Buffer, out: Buffer[]): void {
    let i = 0;
    const n = chunk.length;
    if (this.have > 0) {
      if (this.need < 0) {
        const take = Math.min(5 - this.have, n);
        this.parts.push(chunk.subarray(0, take));
        this.have += take;
        i = take;
        if (this.have < 5) return;
        const head = Buffer.concat(this.parts);
        this.parts = [head];
        this.need = 1 + this.checkedLength(head, 0);
      }
      const take = Math.min(this.need - this.have, n - i);
      this.parts.push(chunk.subarray(i, i + take));
      this.have += take;
      i += take;
      if (this.have < this.need) return;
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
        return;
      }
      const total = 1 + this.checkedLength(chunk, i);
      if (n - i < total) {
        this.parts = [chunk.subarray(i)];
        this.have = n - i;
        this.need = total;
        return;
      }
      // A chunk that is exactly one message (the usual case) is passed on as it is.
      out.push(i === 0 && total === n ? chunk : sliceOf(chunk, i, i + total));
      i += total;
    }
  }

  private checkedLength(buf: Buffer, at: number): number {
    const length = buf.readInt32BE(at + 1);
    if (length < 4 || length > this.maxMessageBytes) throw new FrameError(buf[at], length);
    return length;
  }
}
