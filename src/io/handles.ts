// Node's TCP handles used directly, through the stream_wrap binding, where
// the net.Socket machinery costs more than the work: a connection is read
// and written once or twice per transaction, and each pass through net's
// Writable (writeOrBuffer, a WriteWrap built from an API template, a
// nextTick for afterWrite) cost more instructions than the proxy's own
// handling of the message. Everything here has a fallback: when the binding
// is not there, callers use net.Socket as usual.

/** What Node's stream_wrap binding provides (process.binding('stream_wrap')). */
export interface StreamBinding {
  WriteWrap: new () => WriteReq;
  ShutdownWrap: new () => ShutdownReq;
  streamBaseState: Int32Array;
  kReadBytesOrError: number;
  kLastWriteWasAsync: number;
}

/** The parts of Node's TCP handle (tcp_wrap) the proxy uses. */
export interface TcpHandle {
  onread: (this: TcpHandle, arrayBuffer: ArrayBuffer | undefined) => void;
  readStart(): number;
  readStop(): number;
  useUserBuffer(buf: Uint8Array): void;
  setNoDelay(on: boolean): number;
  /** TCP keepalive, the idle time in seconds (what net.Socket.setKeepAlive passes it). */
  setKeepAlive(on: boolean, delaySeconds: number): number;
  writeBuffer(req: WriteReq, data: Buffer): number;
  shutdown(req: ShutdownReq): number;
  close(cb: (this: TcpHandle) => void): void;
}

/** Who is told when a write that went asynchronous completes. */
export interface AsyncWriter {
  afterWrite(bytes: number, status: number): void;
}

export interface WriteReq {
  handle: TcpHandle | null;
  oncomplete: (this: WriteReq, status: number) => void;
  writer: AsyncWriter | null;
  bytes: number;
  /** Kept alive until an asynchronous write completes. */
  buffer: Buffer | null;
}

export interface ShutdownReq {
  handle: TcpHandle;
  oncomplete: (this: ShutdownReq, status: number) => void;
}

/**
 * PGBUDGET_IO=portable: no Node internals at all; every connection is an
 * ordinary net.Socket (the fallback path, run by CI like the fast one).
 */
export const portableOnly = process.env.PGBUDGET_IO === 'portable';

function loadBinding(): StreamBinding | null {
  if (portableOnly) return null;
  try {
    const b = (process as unknown as { binding(name: string): Partial<StreamBinding> }).binding('stream_wrap');
    if (
      typeof b.WriteWrap !== 'function' ||
      typeof b.ShutdownWrap !== 'function' ||
      !(b.streamBaseState instanceof Int32Array) ||
      typeof b.kReadBytesOrError !== 'number' ||
      typeof b.kLastWriteWasAsync !== 'number'
    ) {
      return null;
    }
    return b as StreamBinding;
  } catch {
    return null;
  }
}

/** The binding, or null where this Node.js does not expose it. */
export const binding = loadBinding();

// Whether new connections take the fast path. The checks above see only
// that the internals exist; the start-up self-test (io/selfTest.ts) sees
// whether they still mean what this code assumes, and turns it off if not.
let fast = binding !== null;

/** New connections use the raw handle and direct reads and writes. */
export function fastIo(): boolean {
  return fast;
}

/** From now on every new connection is an ordinary net.Socket. */
export function useSocketsOnly(): void {
  fast = false;
}

// Read once: the binding object is in dictionary mode, and a property load
// on it from the hot path was a generic (uncached) lookup.
const streamState = binding?.streamBaseState ?? new Int32Array(8);
const READ_BYTES = binding?.kReadBytesOrError ?? 0;
const LAST_WRITE_ASYNC = binding?.kLastWriteWasAsync ?? 0;

// Every TCP handle shares one prototype: once it has passed the check, the
// next handle is checked by its prototype alone (once per accepted client).
let checkedPrototype: object | null = null;

export function isTcpHandle(handle: unknown): handle is TcpHandle {
  if (handle === null || typeof handle !== 'object') return false;
  const proto = Object.getPrototypeOf(handle) as object | null;
  if (proto !== null && proto === checkedPrototype) return true;
  const h = handle as Partial<TcpHandle>;
  const ok =
    typeof h.readStart === 'function' &&
    typeof h.readStop === 'function' &&
    typeof h.useUserBuffer === 'function' &&
    typeof h.writeBuffer === 'function' &&
    typeof h.shutdown === 'function' &&
    typeof h.close === 'function' &&
    typeof h.setNoDelay === 'function' &&
    typeof h.setKeepAlive === 'function';
  if (ok) checkedPrototype = proto;
  return ok;
}

/** Bytes read by the read that is being reported (negative: an error or UV_EOF). */
export function readBytes(): number {
  return streamState[READ_BYTES];
}

// Views of the read buffer's first n bytes, one per length, made once:
// copying through from.subarray(0, n) built a view per read, and Node's
// subarray reads .buffer and .byteOffset through C++ getters each time.
const CACHED_VIEW_LENGTHS = 4096;
let viewsOf: Buffer | null = null;
let views: (Uint8Array | undefined)[] = [];

function headView(from: Buffer, n: number): Uint8Array {
  if (from !== viewsOf) {
    viewsOf = from;
    views = new Array<Uint8Array | undefined>(CACHED_VIEW_LENGTHS);
  }
  if (n >= CACHED_VIEW_LENGTHS) return new Uint8Array(from.buffer, from.byteOffset, n);
  return (views[n] ??= new Uint8Array(from.buffer, from.byteOffset, n));
}

/** A copy of the first `n` bytes of `from` (the shared read buffer) that the caller may keep. */
export function copyOut(from: Buffer, n: number): Buffer {
  const chunk = Buffer.allocUnsafe(n);
  chunk.set(headView(from, n));
  return chunk;
}

function onWriteComplete(this: WriteReq, status: number): void {
  const writer = this.writer!;
  const bytes = this.bytes;
  // Nothing of the connection stays reachable from a finished request.
  this.writer = null;
  this.buffer = null;
  this.handle = null;
  writer.afterWrite(bytes, status);
}

// A request object takes part in a write only if the write goes
// asynchronous; a write that completes at once (the usual case) leaves it
// untouched, so one spare serves them all and none is built per write.
let spare: WriteReq | null = null;

/**
 * Writes `data` to `handle`. Returns 0 when it went out at once, a positive
 * number when it is queued (`writer.afterWrite` follows), or a negative
 * errno.
 */
export function writeTo(b: StreamBinding, handle: TcpHandle, data: Buffer, writer: AsyncWriter): number {
  let req = spare;
  if (req === null) {
    req = new b.WriteWrap();
    req.oncomplete = onWriteComplete;
    req.writer = null;
    req.bytes = 0;
    req.buffer = null;
    req.handle = null;
    spare = req;
  }
  req.handle = handle;
  const err = handle.writeBuffer(req, data);
  if (err !== 0) {
    req.handle = null;
    return err;
  }
  if (streamState[LAST_WRITE_ASYNC] === 0) {
    req.handle = null;
    return 0;
  }
  // In flight: this request belongs to the write now.
  spare = null;
  req.writer = writer;
  req.bytes = data.length;
  req.buffer = data;
  return 1;
}
