// Socket reads without the Readable stream machinery. Node's `onread`
// option hands each read to a callback instead of pushing it through the
// stream (allocation, buffering, 'data' emission): under pgbench -S that
// cut the proxy's user CPU from about 24 to 15 µs per transaction in a bare
// forwarding loop. pause(), resume(), 'end' and 'close' behave as usual.
import net from 'node:net';
import { copyOut, portableOnly } from './handles.js';

// One read buffer for every socket: reads complete one at a time on the
// event-loop thread and each is copied out before the callback returns, so
// sharing it is safe, and idle sockets hold no read buffer at all.
export const READ_BUFFER = Buffer.allocUnsafe(64 * 1024);

export type ChunkHandler = (chunk: Buffer) => void;

/** The `onread` option for a socket whose reads go to `onChunk`, each as a Buffer it may keep. */
export function readsTo(onChunk: ChunkHandler): net.OnReadOpts {
  return {
    buffer: READ_BUFFER,
    callback: (n: number) => {
      // Small reads come from Buffer's shared pool; the copy is cheaper than
      // the stream's own per-read allocation it replaces.
      onChunk(copyOut(READ_BUFFER, n));
      return true; // backpressure is the session's own pause()/resume()
    },
  };
}

/** A connection a listening server accepted, before any net.Socket is made for it. */
export type Accepted = { handle: unknown; server: net.Server } | { socket: net.Socket };

interface ServerInternals {
  _handle?: { onconnection?: (err: number, clientHandle: unknown) => void } | null;
}

/**
 * Makes a listening `server` hand each accepted connection to `accept` as
 * its raw handle, so that exactly one net.Socket is made for it, with
 * `onread` (net.Server has no `onread` option, and making a second socket
 * over the handle of the first cost about 20% of the proxy's instructions
 * per connection under pgbench -C). This replaces net.Server's internal
 * onconnection; it is called after 'listening'. Where that internal is
 * not there, connections arrive through 'connection' as ordinary sockets
 * read through 'data' events. Accept errors (EMFILE…) go to `onError`
 * instead of crashing the process with an unhandled 'error'.
 */
export function acceptRaw(server: net.Server, accept: (a: Accepted) => void, onError: (err: Error) => void): void {
  const handle = (server as unknown as ServerInternals)._handle;
  if (portableOnly || !handle || typeof handle.onconnection !== 'function') {
    server.on('connection', (socket) => accept({ socket }));
    return;
  }
  handle.onconnection = (err, clientHandle) => {
    if (err) return onError(new Error(`accept failed (errno ${err})`));
    accept({ handle: clientHandle, server });
  };
}

/** Closes a connection that was accepted but will not be served. */
export function closeAccepted(accepted: Accepted): void {
  if ('socket' in accepted) {
    accepted.socket.destroy();
    return;
  }
  const handle = accepted.handle as { close?: () => void } | null;
  handle?.close?.();
}
