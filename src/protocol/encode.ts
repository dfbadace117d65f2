// Encoders for the few backend messages the proxy writes itself.
// Every message: 1-byte type, int32 length that excludes the type byte.

function message(type: string, body: Buffer): Buffer {
  const out = Buffer.allocUnsafe(5 + body.length);
  out[0] = type.charCodeAt(0);
  out.writeInt32BE(4 + body.length, 1);
  body.copy(out, 5);
  return out;
}

function int32s(...values: number[]): Buffer {
  const b = Buffer.allocUnsafe(4 * values.length);
  values.forEach((v, i) => b.writeInt32BE(v, 4 * i));
  return b;
}

function cstring(s: string): Buffer {
  return Buffer.from(s + '\0', 'utf8');
}

export interface ErrorFields {
  severity: 'ERROR' | 'FATAL' | 'PANIC' | 'WARNING' | 'NOTICE' | 'LOG';
  code: string;
  message: string;
  detail?: string;
  hint?: string;
  /** Where in PostgreSQL's source an error it would raise itself comes from: clients look at these (postgres.js retries on routine). */
  file?: string;
  routine?: string;
}

/** ErrorResponse ('E') or, with asNotice, NoticeResponse ('N'). */
export function errorResponse(fields: ErrorFields, asNotice = false): Buffer {
  const parts = [
    cstring('S' + fields.severity),
    cstring('V' + fields.severity),
    cstring('C' + fields.code),
    cstring('M' + fields.message),
  ];
  if (fields.detail) parts.push(cstring('D' + fields.detail));
  if (fields.hint) parts.push(cstring('H' + fields.hint));
  if (fields.file) parts.push(cstring('F' + fields.file));
  if (fields.routine) parts.push(cstring('R' + fields.routine));
  parts.push(Buffer.from([0]));
  return message(asNotice ? 'N' : 'E', Buffer.concat(parts));
}

export function authenticationOk(): Buffer {
  return message('R', int32s(0));
}

/** AuthenticationCleartextPassword: the password itself is asked for (over TLS only). */
export function authenticationCleartextPassword(): Buffer {
  return message('R', int32s(3));
}

/** AuthenticationMD5Password: the 4-byte salt the client hashes its answer with. */
export function authenticationMD5Password(salt: Buffer): Buffer {
  return message('R', Buffer.concat([int32s(5), salt]));
}

/** AuthenticationSASL: the mechanisms offered, each a C string, then an empty one. */
export function authenticationSASL(mechanisms: readonly string[]): Buffer {
  return message('R', Buffer.concat([int32s(10), ...mechanisms.map(cstring), Buffer.from([0])]));
}

/** AuthenticationSASLContinue (11) or AuthenticationSASLFinal (12) with the mechanism's data. */
export function authenticationSASLData(final: boolean, data: string): Buffer {
  return message('R', Buffer.concat([int32s(final ? 12 : 11), Buffer.from(data, 'utf8')]));
}

export function parameterStatus(name: string, value: string): Buffer {
  return message('S', Buffer.concat([cstring(name), cstring(value)]));
}

/** Bytes of a BackendKeyData message. */
export const BACKEND_KEY_DATA_BYTES = 13;

/** BackendKeyData ('K'), written into `out` at `at` (a login's welcome is built in one Buffer). */
export function writeBackendKeyData(out: Buffer, at: number, processId: number, secretKey: number): void {
  out[at] = 0x4b;
  out.writeInt32BE(12, at + 1);
  out.writeInt32BE(processId, at + 5);
  out.writeInt32BE(secretKey, at + 9);
}

export function readyForQuery(status: 'I' | 'T' | 'E'): Buffer {
  return message('Z', Buffer.from(status, 'latin1'));
}

/** NegotiateProtocolVersion ('v'): newest minor version we speak, and the options we ignore. */
export function negotiateProtocolVersion(newestMinor: number, unsupportedOptions: readonly string[]): Buffer {
  return message('v', Buffer.concat([int32s(newestMinor, unsupportedOptions.length), ...unsupportedOptions.map(cstring)]));
}

/** StartupMessage (protocol 3.0): no type byte; int32 length, int32 version, name\0value\0 pairs, \0. */
export function startupMessage(params: Record<string, string>): Buffer {
  const pairs = Object.entries(params).flatMap(([k, v]) => [cstring(k), cstring(v)]);
  const body = Buffer.concat([...pairs, Buffer.from([0])]);
  return Buffer.concat([int32s(8 + body.length, 196608), body]);
}

/** CancelRequest as sent to the server: length 16, code, pid, secret. */
export function cancelRequest(processId: number, secretKey: number): Buffer {
  return int32s(16, 80877102, processId, secretKey);
}

/** SSLRequest: used only as a cheap reachability probe that takes no backend slot. */
export function sslRequest(): Buffer {
  return int32s(8, 80877103);
}
