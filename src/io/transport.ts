// The one interface for a byte connection, client side and server side
// alike: reads delivered as chunks to a handler, writes with backpressure,
// pause/resume, half-close and close. Three implementations: the raw TCP
// handle (io/raw.ts, the fast path for accepted clients), a net.Socket
// (io/socket.ts, the portable path and every server connection) and TLS over
// either (io/tls.ts).
import type net from 'node:net';

/** Receives a transport's events. None is called after onClose. */
export interface TransportHandler {
  /** Bytes read; the chunk is the handler's to keep. */
  onData(chunk: Buffer): void;
  /** Writes queued past the high-water mark have gone out. */
  onDrain(): void;
  /** A read or write failed; onClose follows. */
  onError(message: string): void;
  /** The connection is closed; called once. */
  onClose(): void;
}

export interface Transport {
  /** Queues bytes; false when the caller should wait for onDrain. A write after end is dropped. */
  write(data: Buffer): boolean;
  /** Sends `data` (if any), then closes the sending side; the connection closes when the peer does. */
  end(data?: Buffer): void;
  /** The peer said goodbye: closes once queued bytes are out, without waiting for the peer's end of stream. */
  close(): void;
  /** Closes at once; bytes not yet sent are dropped. */
  destroy(): void;
  pause(): void;
  resume(): void;
  isPaused(): boolean;
  /** Neither ended nor closed. */
  readonly writable: boolean;
  /**
   * Hands the connection over as a net.Socket, for a protocol layered on
   * top (TLS): this transport reports nothing more and its handler is
   * dropped. Only between reads, with nothing queued to write.
   */
  detach(): net.Socket;
}

/** Bytes queued in user space (the kernel's buffer is full) before write() asks the caller to wait. */
export const HIGH_WATER_MARK = 16 * 1024;
