// Accepting clients: a listening net.Server hands each connection over as
// its raw TCP handle, which becomes a transport (raw where the fast path is
// on, else one net.Socket).
import type net from 'node:net';
import { binding, fastIo, isTcpHandle } from './handles.js';
import { RawTransport, socketOverHandle } from './raw.js';
import { readsTo } from './reads.js';
import { SocketTransport, socketTransport } from './socket.js';
import type { Transport, TransportHandler } from './transport.js';
import { fdOf, setUserTimeout } from './userTimeout.js';

/** A connection a listening server accepted, before any net.Socket is made for it. */
export type Accepted = { handle: unknown; server: net.Server } | { socket: net.Socket };

interface ServerInternals {
  _handle?: { onconnection?: (err: number, clientHandle: unknown) => void } | null;
}

/**
 * Makes a listening `server` hand each accepted connection to `accept` as
 * its raw handle, so that at most one net.Socket is made for it (net.Server
 * has no `onread` option, and making a second socket over the handle of the
 * first cost about 20% of the proxy's instructions per connection under
 * pgbench -C). This replaces net.Server's internal onconnection; it is
 * called after 'listening'. On the portable path, connections arrive
 * through 'connection' as ordinary sockets read through 'data' events.
 * Accept errors (EMFILE…) go to `onError` instead of crashing the process
 * with an unhandled 'error'.
 */
export function acceptRaw(server: net.Server, accept: (a: Accepted) => void, onError: (err: Error) => void): void {
  const handle = (server as unknown as ServerInternals)._handle;
  if (!fastIo() || !handle || typeof handle.onconnection !== 'function') {
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

export interface ClientTransportOptions {
  /** Use the raw handle where possible (the default); false forces a net.Socket. */
  raw?: boolean;
  /** TCP keepalive idle time (0 or absent: off), so a client host that vanished is noticed. */
  keepAliveMs?: number;
  /** TCP_USER_TIMEOUT (0 or absent: the kernel's), so a client that vanished with bytes in flight is noticed too. */
  userTimeoutMs?: number;
}

/** The transport for an accepted client, its events going to `handler`. */
export function clientTransport(accepted: Accepted, handler: TransportHandler, options: ClientTransportOptions = {}): Transport {
  const keepAliveMs = options.keepAliveMs ?? 0;
  if (options.userTimeoutMs) setUserTimeout(fdOf('socket' in accepted ? accepted.socket : accepted.handle), options.userTimeoutMs);
  if ('socket' in accepted) return socketTransport(accepted.socket, handler, keepAliveMs);
  if (binding && fastIo() && options.raw !== false && isTcpHandle(accepted.handle)) {
    return new RawTransport(accepted.handle, accepted.server, handler, binding, keepAliveMs);
  }
  let transport: SocketTransport | null = null;
  const socket = socketOverHandle(accepted.handle, accepted.server, true, readsTo((chunk) => transport!.onRead(chunk)));
  socket.setNoDelay(true);
  if (keepAliveMs > 0) socket.setKeepAlive(true, keepAliveMs);
  transport = new SocketTransport(socket, handler);
  return transport;
}
