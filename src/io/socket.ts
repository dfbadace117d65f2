// The net.Socket transport: the portable path for accepted clients, and
// every server connection. Where the fast path is on, a connected socket's
// reads and writes skip net's stream machinery (reads of data skip
// onStreamRead; writes skip its Writable whenever that has nothing queued,
// which keeps the order of bytes, since libuv queues writes in the order
// they are made), while 'connect', end of stream, errors and 'close' still
// come through net as usual. Under pgbench -S that took about 4k of 24k
// instructions per transaction off the server side.
import net from 'node:net';
import { getSystemErrorName } from 'node:util';
import { binding, copyOut, fastIo, isTcpHandle, readBytes, writeTo, type AsyncWriter, type TcpHandle } from './handles.js';
import { READ_BUFFER, readsTo } from './reads.js';
import type { Transport, TransportHandler } from './transport.js';
import { fdOf, setUserTimeout } from './userTimeout.js';

const DETACHED: TransportHandler = { onData() {}, onDrain() {}, onError() {}, onClose() {} };

export class SocketTransport implements Transport, AsyncWriter {
  /** The socket's TCP handle, read and written directly; else null. */
  private direct: TcpHandle | null = null;
  /** Bytes of direct writes that went asynchronous and have not completed. */
  private directQueued = 0;
  private directNeedDrain = false;

  constructor(
    readonly socket: net.Socket,
    private handler: TransportHandler,
  ) {
    socket.on('drain', () => this.handler.onDrain());
    socket.on('error', (err) => this.handler.onError(err.message));
    socket.on('close', () => this.handler.onClose());
  }

  /** Reads that come through the socket's onread option (readsTo) land here. */
  onRead(chunk: Buffer): void {
    this.handler.onData(chunk);
  }

  get writable(): boolean {
    return this.socket.writable;
  }

  /**
   * Reads and writes of data go straight to the socket's TCP handle from
   * here on, where the fast path is on. Only for a connected socket made
   * with the onread option of readsTo (so Node reads into READ_BUFFER).
   */
  goDirect(): void {
    const handle = (this.socket as unknown as { _handle?: unknown })._handle;
    if (!fastIo() || !binding || !isTcpHandle(handle)) return;
    const transport = this;
    const viaNet = handle.onread;
    handle.onread = function (this: TcpHandle, arrayBuffer) {
      const n = readBytes();
      if (n <= 0) return viaNet.call(this, arrayBuffer);
      // Node read into READ_BUFFER: copy out before the next read.
      transport.onRead(copyOut(READ_BUFFER, n));
    };
    this.direct = handle;
  }

  write(data: Buffer): boolean {
    const socket = this.socket;
    // As the raw handle: a write after end is dropped, not an 'error' that destroys the socket.
    if (!socket.writable) return false;
    const handle = this.direct;
    if (handle === null || socket.writableLength !== 0) return socket.write(data);
    const r = writeTo(binding!, handle, data, this);
    if (r < 0) {
      socket.destroy(new Error(`write ${getSystemErrorName(r)}`));
      return false;
    }
    if (r > 0) {
      this.directQueued += data.length;
      if (this.directQueued >= socket.writableHighWaterMark) this.directNeedDrain = true;
    }
    return !this.directNeedDrain;
  }

  /** A direct write that went asynchronous has completed (io/handles.ts). */
  afterWrite(bytes: number, status: number): void {
    this.directQueued -= bytes;
    if (this.socket.destroyed) return;
    if (status < 0) {
      this.socket.destroy(new Error(`write ${getSystemErrorName(status)}`));
      return;
    }
    if (this.directNeedDrain && this.directQueued === 0) {
      this.directNeedDrain = false;
      this.handler.onDrain();
    }
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

  detach(): net.Socket {
    if (this.directQueued !== 0 || this.socket.writableLength !== 0) throw new Error('a writing connection cannot be handed over');
    const socket = this.socket;
    this.handler = DETACHED;
    socket.removeAllListeners('data');
    socket.removeAllListeners('drain');
    socket.removeAllListeners('error');
    socket.removeAllListeners('close');
    return socket;
  }
}

/** A transport for an accepted net.Socket, read through 'data' events. */
export function socketTransport(socket: net.Socket, handler: TransportHandler, keepAliveMs: number): SocketTransport {
  socket.setNoDelay(true);
  if (keepAliveMs > 0) socket.setKeepAlive(true, keepAliveMs);
  const transport = new SocketTransport(socket, handler);
  socket.on('data', (chunk: Buffer) => transport.onRead(chunk));
  socket.resume();
  return transport;
}

export interface ConnectOptions {
  host: string;
  port: number;
  /** TCP keepalive idle time (0: off), so a peer host that vanished is noticed. */
  keepAliveMs: number;
  /** TCP_USER_TIMEOUT (0 or absent: the kernel's), so a peer that vanished with bytes in flight is noticed too. */
  userTimeoutMs?: number;
  /** The caller calls goDirect itself, when it knows the connection stays plain (TLS may start first). */
  deferDirect?: boolean;
}

export interface ConnectHandler extends TransportHandler {
  /** The TCP connection is up. */
  onConnect(): void;
}

/**
 * An outgoing connection (to the upstream); where the fast path is on, read
 * through the onread option and then directly once connected, else through
 * 'data' events (onread's user buffer is one of the internals the self-test
 * may have found wanting).
 */
export function connectTransport(options: ConnectOptions, handler: ConnectHandler): SocketTransport {
  let transport: SocketTransport | null = null;
  const fast = fastIo();
  const socket = net.connect({
    host: options.host,
    port: options.port,
    noDelay: true,
    keepAlive: options.keepAliveMs > 0,
    keepAliveInitialDelay: options.keepAliveMs,
    ...(fast ? { onread: readsTo((chunk) => transport!.onRead(chunk)) } : {}),
  });
  transport = new SocketTransport(socket, handler);
  const t = transport;
  if (!fast) socket.on('data', (chunk: Buffer) => t.onRead(chunk));
  socket.once('connect', () => {
    if (options.userTimeoutMs) setUserTimeout(fdOf(socket), options.userTimeoutMs);
    if (fast && !options.deferDirect) t.goDirect();
    handler.onConnect();
  });
  return t;
}
