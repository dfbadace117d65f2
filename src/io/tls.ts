// TLS over any transport: the connection under it is handed over as a
// net.Socket (Transport.detach) and wrapped in a TLSSocket, which is served
// as a socket transport. Client TLS (SSLRequest answered 'S') and TLS to
// the upstream both start from a transport that already carried plain
// bytes, so it is an upgrade, not a different kind of connection.
import tls from 'node:tls';
import { SocketTransport } from './socket.js';
import type { Transport, TransportHandler } from './transport.js';

/** The certificate a client showed: its CN once verified against the CA, else why it was not. */
export type PeerCertificate = { verified: true; commonName: string | null } | { verified: false; reason: string };

export interface TlsUpgradeHandler extends TransportHandler {
  /**
   * The TLS handshake is done; bytes flow. `peer`: the client's certificate
   * as verified (server side); `alpn`: the application protocol ALPN
   * settled on, or null when the peer offered none.
   */
  onSecure(peer: PeerCertificate, alpn: string | null): void;
}

/**
 * Whether the client's certificate chains to the CA. A TLSSocket made
 * outside a tls.Server never checks it (tls.Server's own listener does,
 * with the handle's verifyError): so it is checked here the same way. If
 * that method ever goes, nobody counts as verified: it fails closed.
 */
function peerOf(socket: tls.TLSSocket): PeerCertificate {
  const cert = socket.getPeerCertificate();
  if (!cert || Object.keys(cert).length === 0) return { verified: false, reason: 'no certificate' };
  const handle = (socket as unknown as { _handle?: { verifyError?: () => Error | null } })._handle;
  if (typeof handle?.verifyError !== 'function') return { verified: false, reason: 'verification unavailable' };
  const error = handle.verifyError();
  if (error) return { verified: false, reason: (error as NodeJS.ErrnoException).code ?? error.message };
  const cn = cert.subject?.CN;
  return { verified: true, commonName: typeof cn === 'string' ? cn : null };
}

const NOT_A_CLIENT: PeerCertificate = { verified: false, reason: 'not asked' };

/**
 * Starts TLS on `under`, between reads: `options.isServer` for a client
 * that asked for it, else as the client of a server. `head`: bytes of the
 * TLS handshake already read from `under` (a client's direct TLS: the start
 * of its ClientHello), given back to TLS first. Handshake failures come to
 * `handler.onError`, then `onClose`.
 */
export function startTls(
  under: Transport,
  options: tls.TLSSocketOptions & tls.ConnectionOptions,
  handler: TlsUpgradeHandler,
  head: Buffer | null = null,
): SocketTransport {
  const socket = under.detach();
  if (head !== null && head.length > 0) {
    // Buffered in the socket (a flowing one would hand it to no listener), where
    // the TLSSocket takes it before its first read from the handle.
    if (socket.readableFlowing) socket.pause();
    socket.unshift(head);
  }
  const secure = options.isServer ? new tls.TLSSocket(socket, options) : tls.connect({ ...options, socket });
  const transport = new SocketTransport(secure, handler);
  secure.on(options.isServer ? 'secure' : 'secureConnect', () =>
    handler.onSecure(options.isServer ? peerOf(secure) : NOT_A_CLIENT, secure.alpnProtocol || null),
  );
  secure.on('data', (chunk: Buffer) => transport.onRead(chunk));
  // The plain socket's own failures end the TLS socket, which reports them.
  socket.on('error', (err) => secure.destroy(err));
  return transport;
}
