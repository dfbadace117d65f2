// Views into a Buffer without Buffer.prototype.subarray. Node's subarray
// reads `this.buffer` and `this.byteOffset` on every call; under the proxy's
// mix of buffers those are generic property loads into C++ getters, and in
// extended-protocol traffic (five messages per chunk, each a view) they were
// about an eighth of the proxy's instructions per transaction. Here the two
// are read once per chunk and the view is made by Buffer's own class.

/** Buffer's implementation class (what Buffer.from and subarray construct), found through Symbol.species. */
const FastBuffer = ((Buffer as unknown as Record<symbol, unknown>)[Symbol.species] ?? null) as
  | (new (buffer: ArrayBufferLike, byteOffset: number, length: number) => Buffer)
  | null;
// PGBUDGET_IO=portable (see io/handles.ts) leaves this out too, and so does
// a failed start-up self-test (io/selfTest.ts).
let usable =
  process.env.PGBUDGET_IO !== 'portable' && typeof FastBuffer === 'function' && new FastBuffer(new ArrayBuffer(1), 0, 1) instanceof Buffer;

/** sliceOf is subarray from now on. */
export function useSubarrayOnly(): void {
  usable = false;
}

/** Whether sliceOf makes its views through Buffer's implementation class. */
export function fastViews(): boolean {
  return usable;
}

let lastChunk: Buffer | null = null;
let lastArrayBuffer: ArrayBufferLike = new ArrayBuffer(0);
let lastOffset = 0;

/** `chunk.subarray(start, end)`, for 0 <= start <= end <= chunk.length (not checked). */
export function sliceOf(chunk: Buffer, start: number, end: number): Buffer {
  if (!usable) return chunk.subarray(start, end);
  if (chunk !== lastChunk) {
    const memory = chunk.buffer;
    // A large chunk (a long message put together whole) is not kept alive
    // by the memo after its reader is done with it.
    if (memory.byteLength > MEMO_MAX_BYTES) return new FastBuffer!(memory, chunk.byteOffset + start, end - start);
    lastChunk = chunk;
    lastArrayBuffer = memory;
    lastOffset = chunk.byteOffset;
  }
  return new FastBuffer!(lastArrayBuffer, lastOffset + start, end - start);
}

/** The largest memory the memo keeps alive: a socket read is at most 64 KiB. */
export const MEMO_MAX_BYTES = 64 * 1024;
