// Startup-phase packets have no type byte: int32 length (counting itself),
// int32 request code, then the body.
import { CANCEL_REQUEST, GSSENC_REQUEST, PROTOCOL_V3, SSL_REQUEST } from './codes.js';

/** PostgreSQL's own limit (MAX_STARTUP_PACKET_LENGTH). */
export const MAX_STARTUP_PACKET = 10000;

export type StartupPacket =
  | { kind: 'ssl' }
  | { kind: 'gssenc' }
  | { kind: 'cancel'; processId: number; secretKey: number }
  | { kind: 'startup'; minorVersion: number; params: Readonly<Record<string, string>>; protocolOptions: readonly string[] };

export class StartupPacketError extends Error {
  override readonly name = 'StartupPacketError';
}

/**
 * What startupPacketLength returns for a Terminate message ('X', length 4)
 * where a startup packet was due: node-postgres sends one ahead of its
 * startup packet when end() follows connect() at once. It is a goodbye.
 */
export const TERMINATE_BEFORE_STARTUP = -2;

/**
 * Declared length of the packet at the start of buf, or -1 when too few
 * bytes are there to tell, or TERMINATE_BEFORE_STARTUP. Throws
 * StartupPacketError on a length outside 8..MAX_STARTUP_PACKET.
 */
export function startupPacketLength(buf: Buffer): number {
  // No startup packet's length starts with 'X' (they are below 10000).
  if (buf.length > 0 && buf[0] === 0x58) {
    if (buf.length < 5) return -1;
    if (buf.readInt32BE(1) === 4) return TERMINATE_BEFORE_STARTUP;
  }
  if (buf.length < 4) return -1;
  const length = buf.readInt32BE(0);
  if (length < 8 || length > MAX_STARTUP_PACKET) {
    throw new StartupPacketError(`invalid startup packet length ${length}`);
  }
  return length;
}

// Services reconnect with the same startup packet again and again (same
// user, database, options): the last one's parse is kept and shared. Its
// params object is frozen, so no session can change another's.
let lastPacket: Buffer | null = null;
let lastParsed: StartupPacket | null = null;

/** Parses one complete startup-phase packet (buf holds exactly its bytes). */
export function parseStartupPacket(buf: Buffer): StartupPacket {
  if (lastPacket !== null && lastPacket.length === buf.length && lastPacket.equals(buf)) return lastParsed!;
  const parsed = parsePacket(buf);
  if (parsed.kind === 'startup') {
    Object.freeze(parsed.params);
    Object.freeze(parsed.protocolOptions);
    lastPacket = Buffer.from(buf);
    lastParsed = Object.freeze(parsed);
  }
  return parsed;
}

function parsePacket(buf: Buffer): StartupPacket {
  const code = buf.readInt32BE(4);
  if (code === SSL_REQUEST) return { kind: 'ssl' };
  if (code === GSSENC_REQUEST) return { kind: 'gssenc' };
  if (code === CANCEL_REQUEST) {
    if (buf.length !== 16) throw new StartupPacketError('invalid cancel request length');
    return { kind: 'cancel', processId: buf.readInt32BE(8), secretKey: buf.readInt32BE(12) };
  }
  const major = code >>> 16;
  const minor = code & 0xffff;
  if (major !== PROTOCOL_V3 >>> 16) {
    throw new StartupPacketError(`unsupported frontend protocol ${major}.${minor}: server supports 3.0`);
  }
  const params: Record<string, string> = Object.create(null);
  const protocolOptions: string[] = [];
  let i = 8;
  // Body: name\0value\0 pairs, then one terminating \0.
  for (;;) {
    const nameEnd = buf.indexOf(0, i);
    if (nameEnd < 0) throw new StartupPacketError('startup packet is not null-terminated');
    if (nameEnd === i) break;
    const name = buf.toString('utf8', i, nameEnd);
    const valueEnd = buf.indexOf(0, nameEnd + 1);
    if (valueEnd < 0) throw new StartupPacketError(`startup parameter "${name}" has no value`);
    const value = buf.toString('utf8', nameEnd + 1, valueEnd);
    if (name.startsWith('_pq_.')) protocolOptions.push(name);
    else params[name] = value;
    i = valueEnd + 1;
  }
  if (i !== buf.length - 1) throw new StartupPacketError('trailing bytes after startup packet');
  if (!params.user) throw new StartupPacketError('no PostgreSQL user name specified in startup packet');
  return { kind: 'startup', minorVersion: minor, params, protocolOptions };
}
