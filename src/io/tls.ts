// TLS over any transport: the connection under it is handed over as a
// net.Socket (Transport.detach) and wrapped in a TLSSocket, which is served
// as a socket transport. Client TLS (SSLRequest answered 'S') and TLS to
// the upstream both start from a transport that already carried plain
// bytes, so it is an upgrade, not a different kind of connection.
import tls from 'node:tls';
import { SocketTransport } from './socket.js';
import type { Transport, TransportHandler } from './transport.js';

export interface TlsUpgradeHandler extends TransportHandler {
  /** The TLS handshake is done; bytes flow. */
  onSecure(): void;
}

/**
 * Starts TLS on `under`, between reads: `options.isServer` for a client
 * that asked for it, else as the client of a server. Handshake failures
 * come to `handler.onError`, then `onClose`.
 */
export function startTls(under: Transport, options: tls.TLSSocketOptions & tls.ConnectionOptions, handler: TlsUpgradeHandler): SocketTransport {
  const socket = under.detach();
  const secure = options.isServer ? new tls.TLSSocket(socket, options) : tls.connect({ ...options, socket });
  const transport = new SocketTransport(secure, handler);
  secure.on(options.isServer ? 'secure' : 'secureConnect', () => handler.onSecure());
  secure.on('data', (chunk: Buffer) => transport.onRead(chunk));
  // The plain socket's own failures end the TLS socket, which reports them.
  socket.on('error', (err) => secure.destroy(err));
  return transport;
}
