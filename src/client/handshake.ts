// The handshake before a session starts: the startup packet, SSL/GSSENC
// negotiation, direct TLS, CancelRequest, and a Terminate sent before
// anything else.
// (Client authentication comes here too.) Pure: bytes in, decisions out to
// a listener; the caller keeps what is not yet a whole packet.
import { negotiateProtocolVersion } from '../protocol/encode.js';
import { parseStartupPacket, startupPacketLength, StartupPacketError, TERMINATE_BEFORE_STARTUP } from '../protocol/startup.js';
import { sliceOf } from '../io/views.js';

export interface HandshakeListener {
  /** Bytes for the client that the handshake answers with itself (encryption refused, protocol negotiation). */
  answer(bytes: Buffer): void;
  /** The startup packet; `rest` is what the client pipelined after it (ordinary traffic). */
  startup(params: Readonly<Record<string, string>>, rest: Buffer): void;
  /** A CancelRequest: nothing else comes on this connection. */
  cancel(processId: number, secretKey: number): void;
  /** A Terminate before any startup packet: PostgreSQL closes without a word. */
  goodbye(): void;
  /** A malformed packet; `what` names the cause. */
  violation(what: string): void;
  /** TLS can be started now (configured, not started yet): an SSLRequest is answered 'S'. */
  readonly tlsOffered: boolean;
  /** Answers 'S' and starts TLS: what follows is read from the TLS connection, a fresh handshake buffer. */
  startTls(): void;
  /** Nothing has been taken from this connection yet: the bytes start with the first the client sent. */
  readonly fresh: boolean;
  /**
   * Direct TLS (PostgreSQL 17's sslnegotiation=direct), when tlsOffered: TLS
   * starts without an 'S', `hello` (the bytes read so far, the start of the
   * ClientHello) given back to it; ALPN "postgresql" is required.
   */
  startDirectTls(hello: Buffer): void;
  /** Direct TLS when TLS is not offered: as PostgreSQL, the connection closes without a word. */
  refuseDirectTls(): void;
}

const EMPTY = Buffer.alloc(0);

/**
 * The first byte of a TLS handshake record. No startup packet starts with
 * it (its length would be hundreds of megabytes), so one byte tells.
 */
const TLS_HANDSHAKE = 0x16;

/** The answer to SSLRequest and GSSENCRequest: 'N', not supported. */
const ENCRYPTION_REFUSED = Buffer.from('N');

/**
 * Reads handshake packets from `held` (bytes kept from earlier reads) and
 * `chunk`. Returns the bytes to keep for the next read, or null once the
 * handshake is over (startup, cancel, goodbye or violation was called).
 */
export function readHandshake(held: Buffer, chunk: Buffer, listener: HandshakeListener): Buffer | null {
  let buf = held.length ? Buffer.concat([held, chunk]) : chunk;
  for (;;) {
    // Only where the connection starts, as PostgreSQL: later (after an 'N', or inside TLS) it is an invalid length.
    if (buf.length > 0 && buf[0] === TLS_HANDSHAKE && listener.fresh) {
      if (!listener.tlsOffered) {
        listener.refuseDirectTls();
        return null;
      }
      listener.startDirectTls(Buffer.from(buf));
      return EMPTY;
    }
    let length: number;
    try {
      length = startupPacketLength(buf);
    } catch (err) {
      listener.violation((err as Error).message);
      return null;
    }
    if (length === TERMINATE_BEFORE_STARTUP) {
      listener.goodbye();
      return null;
    }
    if (length < 0 || buf.length < length) return buf;
    // Usually the chunk is the packet: no views to make.
    const whole = length === buf.length;
    const packet = whole ? buf : sliceOf(buf, 0, length);
    buf = whole ? EMPTY : sliceOf(buf, length, buf.length);
    let parsed;
    try {
      parsed = parseStartupPacket(packet);
    } catch (err) {
      if (err instanceof StartupPacketError) {
        listener.violation(err.message);
        return null;
      }
      throw err;
    }
    switch (parsed.kind) {
      case 'ssl':
        if (listener.tlsOffered) {
          // Bytes sent before the TLS handshake could be injected by anyone on the path: refused, as PostgreSQL does.
          if (buf.length > 0) {
            listener.violation('received unencrypted data after SSL request');
            return null;
          }
          listener.startTls();
          return EMPTY;
        }
        listener.answer(ENCRYPTION_REFUSED);
        continue;
      case 'gssenc':
        // GSSAPI encryption is not offered: "not supported", the client goes on in plain text or with TLS.
        listener.answer(ENCRYPTION_REFUSED);
        continue;
      case 'cancel':
        listener.cancel(parsed.processId, parsed.secretKey);
        return null;
      case 'startup':
        if (parsed.minorVersion !== 0 || parsed.protocolOptions.length > 0) {
          listener.answer(negotiateProtocolVersion(0, parsed.protocolOptions));
        }
        listener.startup(parsed.params, buf.length > 0 ? Buffer.from(buf) : EMPTY);
        return null;
    }
  }
}
