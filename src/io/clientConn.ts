// A client connection as the session sees it: write, end, destroy, pause and
// resume, with its events delivered to one handler object.
//
// Where Node's stream_wrap binding is there, a connection is its raw TCP
// handle and nothing more: no net.Socket, no Duplex state, no EventEmitter.
// Making and tearing down a net.Socket was most of the proxy's own CPU per
// connection under pgbench -C (in a bare accept/answer/close loop: about
// 110 µs of user CPU per connection with net.Socket, 45 µs with the handle).
// Where the binding is not there, the same interface is served by a
// net.Socket (read through onread, or through 'data' events).
import net from 'node:net';
import { getSystemErrorName } from 'node:util';
import { binding, copyOut, isTcpHandle, readBytes, writeTo, type AsyncWriter, type ShutdownReq, type StreamBinding, type TcpHandle } from './handles.js';
import { READ_BUFFER, readsTo, type Accepted } from './reads.js';

/** Receives a client connection's events. Each is called at most once after close, never. */
export interface ClientConnHandler {
  onClientData(chunk: Buffer): void;
  /** Writes queued past the high-water mark have gone out. */
  onClientDrain(): void;
  /** A read or write failed; onClientClose follows. */
  onClientError(message: string): void;
  /** The connection is closed; called once. */
  onClientClose(): void;
}

export interface ClientConn {
  /** Queues bytes; false when the caller should wait for onClientDrain. */
  write(data: Buffer): boolean;
  /** Sends `data` (if any), then closes the sending side; the connection closes when the peer does. */
  end(data?: Buffer): void;
  /**
   * The client said goodbye (Terminate): closes once queued bytes are out,
   * without shutting down and waiting for the client's end of the stream.
   */
  close(): void;
  /** Closes at once; bytes not yet sent are dropped. */
  destroy(): void;
  pause(): void;
  resume(): void;
  isPaused(): boolean;
  /** Neither ended nor closed. */
  readonly writable: boolean;
}

/** Bytes queued in user space (the kernel's buffer is full) before write() asks the caller to wait. */
const HIGH_WATER_MARK = 16 * 1024;
/** libuv's UV_EOF. */
const UV_EOF = -4095;

// ---- the raw handle ----

interface ServerCounts {
  _connections: number;
  _emitCloseIfDrained?: () => void;
}

interface ClosingHandle extends TcpHandle {
  /** Set only while closing, for onHandleClose. */
  conn?: RawConn | null;
}

interface ClosingShutdown extends ShutdownReq {
  conn: RawConn | null;
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

class RawConn implements ClientConn, AsyncWriter {
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
    private readonly handler: ClientConnHandler,
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
      this.handler.onClientData(copyOut(READ_BUFFER, n));
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
      this.handler.onClientDrain();
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
    this.handler.onClientClose();
  }

  private fail(syscall: string, errno: number): void {
    if (this.closed) return;
    this.handler.onClientError(`${syscall} ${getSystemErrorName(errno)}`);
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
}

// ---- net.Socket ----

class SocketConn implements ClientConn {
  constructor(
    private readonly socket: net.Socket,
    handler: ClientConnHandler,
    keepAliveMs: number,
  ) {
    socket.setNoDelay(true);
    if (keepAliveMs > 0) socket.setKeepAlive(true, keepAliveMs);
    socket.on('drain', () => handler.onClientDrain());
    socket.on('error', (err) => handler.onClientError(err.message));
    socket.on('close', () => handler.onClientClose());
  }

  get writable(): boolean {
    return this.socket.writable;
  }

  write(data: Buffer): boolean {
    // As the raw handle: a write after end is dropped, not an 'error' that destroys the socket.
    if (!this.socket.writable) return false;
    return this.socket.write(data);
  }

  end(data?: Buffer): void {
    if (data) this.socket.end(data);
    else this.socket.end();
  }

  close(): void {
    this.socket.destroySoon();
  }

  destroy(): void {
    this.socket.destroy();
  }

  pause(): void {
    this.socket.pause();
  }

  resume(): void {
    this.socket.resume();
  }

  isPaused(): boolean {
    return this.socket.isPaused();
  }
}

export interface ClientConnOptions {
  /** Use the raw handle where possible (the default); false forces a net.Socket. */
  raw?: boolean;
  /** TCP keepalive idle time (0 or absent: off), so a client host that vanished is noticed. */
  keepAliveMs?: number;
}

/** The connection for an accepted client, its events going to `handler`. */
export function clientConn(accepted: Accepted, handler: ClientConnHandler, options: ClientConnOptions = {}): ClientConn {
  const keepAliveMs = options.keepAliveMs ?? 0;
  if ('socket' in accepted) {
    const conn = new SocketConn(accepted.socket, handler, keepAliveMs);
    accepted.socket.on('data', (chunk: Buffer) => handler.onClientData(chunk));
    accepted.socket.resume();
    return conn;
  }
  if (binding && options.raw !== false && isTcpHandle(accepted.handle)) {
    return new RawConn(accepted.handle, accepted.server, handler, binding, keepAliveMs);
  }
  const socketOptions = {
    handle: accepted.handle,
    readable: true,
    writable: true,
    onread: readsTo((chunk) => handler.onClientData(chunk)),
  } as net.SocketConstructorOpts;
  const socket = new net.Socket(socketOptions);
  // Counted like the sockets net.Server makes itself: server.close() waits
  // for it, and Socket's destroy takes it off the count.
  const internals = socket as unknown as { _server: net.Server; server: net.Server };
  internals._server = accepted.server;
  internals.server = accepted.server;
  (accepted.server as unknown as ServerCounts)._connections++;
  return new SocketConn(socket, handler, keepAliveMs);
}

/** Whether accepted connections are served as raw handles on this Node.js. */
export const rawConnectionsAvailable = binding !== null;
