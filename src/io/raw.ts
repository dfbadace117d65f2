// The raw-handle transport: an accepted client connection that is its TCP
// handle and nothing more: no net.Socket, no Duplex state, no EventEmitter.
// Making and tearing down a net.Socket was most of the proxy's own CPU per
// connection under pgbench -C (in a bare accept/answer/close loop: about
// 110 µs of user CPU per connection with net.Socket, 45 µs with the handle).
import net from 'node:net';
import { getSystemErrorName } from 'node:util';
import { copyOut, readBytes, writeTo, type AsyncWriter, type ShutdownReq, type StreamBinding, type TcpHandle } from './handles.js';
import { READ_BUFFER } from './reads.js';
import { HIGH_WATER_MARK, type Transport, type TransportHandler } from './transport.js';

/** libuv's UV_EOF. */
const UV_EOF = -4095;

/** net.Server's connection count, which server.close() waits on. */
export interface ServerCounts {
  _connections: number;
  _emitCloseIfDrained?: () => void;
}

interface ClosingHandle extends TcpHandle {
  /** Set only while closing, for onHandleClose. */
  conn?: RawTransport | null;
}

interface ClosingShutdown extends ShutdownReq {
  conn: RawTransport | null;
}

function ignoreRead(): void {}

// libuv's callbacks are shared functions that find their connection through
// `this` and then drop the reference (see destroy()).
function onShutdownComplete(this: ShutdownReq, status: number): void {
  const req = this as ClosingShutdown;
  const conn = req.conn!;
  req.conn = null;
  conn.afterShutdown(status);
}

function onHandleClose(this: TcpHandle): void {
  const handle = this as ClosingHandle;
  const conn = handle.conn!;
  handle.conn = null;
  conn.afterClose();
}

const DETACHED: TransportHandler = { onData() {}, onDrain() {}, onError() {}, onClose() {} };

export class RawTransport implements Transport, AsyncWriter {
  private paused = false;
  private ended = false;
  private closed = false;
  private eof = false;
  private shutdownDone = false;
  /** Bytes of asynchronous writes not yet completed. */
  private queued = 0;
  private needDrain = false;

  constructor(
    private readonly handle: ClosingHandle,
    private readonly server: net.Server,
    private handler: TransportHandler,
    private readonly b: StreamBinding,
    keepAliveMs: number,
  ) {
    // Counted like the sockets net.Server makes itself: server.close() waits for it.
    (server as unknown as ServerCounts)._connections++;
    handle.setNoDelay(true);
    // As net.Socket.setKeepAlive does it: whole seconds, at least one.
    if (keepAliveMs > 0) handle.setKeepAlive(true, Math.max(1, Math.floor(keepAliveMs / 1000)));
    handle.useUserBuffer(READ_BUFFER);
    handle.onread = () => this.onRead();
    const err = handle.readStart();
    if (err !== 0) this.fail('read', err);
  }

  get writable(): boolean {
    return !this.ended && !this.closed;
  }

  private onRead(): void {
    const n = readBytes();
    if (n > 0) {
      // The read buffer is shared by every connection: copy out before it is reused.
      this.handler.onData(copyOut(READ_BUFFER, n));
      return;
    }
    if (n === 0 || this.closed) return;
    if (n !== UV_EOF) return this.fail('read', n);
    // The client closed its side. As net.Socket without allowHalfOpen: flush, shut down, close.
    this.eof = true;
    if (!this.ended) this.end();
    else if (this.shutdownDone) this.destroy();
  }

  write(data: Buffer): boolean {
    if (this.ended || this.closed) return false;
    const r = writeTo(this.b, this.handle, data, this);
    if (r < 0) {
      this.fail('write', r);
      return false;
    }
    if (r === 0) return !this.needDrain;
    this.queued += data.length;
    if (this.queued >= HIGH_WATER_MARK) this.needDrain = true;
    return !this.needDrain;
  }

  /** An asynchronous write has gone out or failed (io/handles.ts). */
  afterWrite(bytes: number, status: number): void {
    this.queued -= bytes;
    if (this.closed) return;
    if (status < 0) return this.fail('write', status);
    if (this.needDrain && this.queued === 0) {
      this.needDrain = false;
      this.handler.onDrain();
    }
  }

  end(data?: Buffer): void {
    if (this.ended || this.closed) return;
    if (data) this.write(data);
    if (this.closed) return; // the write failed
    this.ended = true;
    const req = new this.b.ShutdownWrap() as ClosingShutdown;
    req.handle = this.handle;
    req.oncomplete = onShutdownComplete;
    req.conn = this;
    // libuv shuts the socket down once the writes queued before it are out.
    const err = this.handle.shutdown(req);
    if (err !== 0) this.destroy();
  }

  close(): void {
    // Nothing queued (the usual case): close now. PostgreSQL does the same
    // on Terminate, and it saves a shutdown and a read of the end of stream.
    if (this.queued === 0) this.destroy();
    else this.end();
  }

  afterShutdown(status: number): void {
    this.shutdownDone = true;
    // A failed shutdown (the peer reset) leaves nothing to wait for.
    if (this.eof || status < 0) this.destroy();
  }

  destroy(): void {
    if (this.closed) return;
    this.closed = true;
    this.ended = true;
    // The handle's JS object outlives the connection until a full GC: the
    // scavenger keeps weak handles of modified objects alive, so whatever the
    // handle still points to is promoted with it. Under pgbench -C that was
    // the whole session graph, promoted on every scavenge. So the handle
    // keeps no reference to this connection once it is closed.
    this.handle.onread = ignoreRead;
    this.handle.conn = this;
    this.handle.close(onHandleClose);
  }

  /** Called by libuv (through onHandleClose) once the handle is closed. */
  afterClose(): void {
    const server = this.server as unknown as ServerCounts;
    server._connections--;
    server._emitCloseIfDrained?.();
    this.handler.onClose();
  }

  private fail(syscall: string, errno: number): void {
    if (this.closed) return;
    this.handler.onError(`${syscall} ${getSystemErrorName(errno)}`);
    this.destroy();
  }

  pause(): void {
    if (this.paused) return;
    this.paused = true;
    if (!this.closed && !this.eof) this.handle.readStop();
  }

  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    if (!this.closed && !this.eof) this.handle.readStart();
  }

  isPaused(): boolean {
    return this.paused;
  }

  detach(): net.Socket {
    if (this.closed || this.queued !== 0) throw new Error('a closed or writing connection cannot be handed over');
    this.handle.readStop();
    this.handle.onread = ignoreRead;
    this.closed = this.ended = true;
    this.handler = DETACHED;
    // The socket takes over the handle and its place in the server's count
    // (Socket's destroy takes it off), so the count is not bumped again.
    return socketOverHandle(this.handle, this.server, false);
  }
}

/** One net.Socket over an accepted handle, counted by `server` as its own sockets are. */
export function socketOverHandle(handle: unknown, server: net.Server, count: boolean, onread?: net.OnReadOpts): net.Socket {
  const socket = new net.Socket({ handle, readable: true, writable: true, ...(onread ? { onread } : {}) } as net.SocketConstructorOpts);
  const internals = socket as unknown as { _server: net.Server; server: net.Server };
  internals._server = server;
  internals.server = server;
  if (count) (server as unknown as ServerCounts)._connections++;
  return socket;
}
