// Reading and writing the few frontend messages whose contents the proxy
// must change: Parse, Bind, Describe and Close carry a statement name, and
// Query carries SQL that may hold session state. Every function takes or
// returns a whole message: type byte, int32 length (excluding the type
// byte), body.

/** A null-terminated string at `offset`; returns the string and the offset after its terminator. */
export function readCString(buf: Buffer, offset: number): [string, number] {
  const end = buf.indexOf(0, offset);
  if (end < 0) throw new RangeError('unterminated string in message');
  return [buf.toString('utf8', offset, end), end + 1];
}

function build(type: number, parts: Buffer[]): Buffer {
  const bodyLength = parts.reduce((n, p) => n + p.length, 0);
  const out = Buffer.allocUnsafe(5 + bodyLength);
  out[0] = type;
  out.writeInt32BE(4 + bodyLength, 1);
  let o = 5;
  for (const p of parts) o += p.copy(out, o);
  return out;
}

const cstr = (s: string) => Buffer.from(s + '\0', 'utf8');

export interface ParseMessage {
  name: string;
  query: string;
  /** The parameter-type section (int16 count, int32 oids): a view of the message; copy it to keep it. */
  paramTypes: Buffer;
}

// One message is read by two layers (session-state checks, then statement
// rewriting), usually back to back: the last decoding of each kind is kept.
// Messages are never changed in place, so the same Buffer means the same text.
let lastParse: { msg: Buffer; parsed: ParseMessage } | null = null;
let lastQuery: { msg: Buffer; sql: string } | null = null;

/** Parse ('P'): name\0 query\0 int16 n, n × int32 oid. */
export function readParse(msg: Buffer): ParseMessage {
  if (lastParse?.msg === msg) return lastParse.parsed;
  const [name, q] = readCString(msg, 5);
  const [query, t] = readCString(msg, q);
  const parsed = { name, query, paramTypes: msg.subarray(t) };
  lastParse = { msg, parsed };
  return parsed;
}

export function buildParse(name: string, query: string, paramTypes: Buffer): Buffer {
  return build(0x50, [cstr(name), cstr(query), paramTypes]);
}

/** Bind ('B'): portal\0 statement\0 then formats and values, kept as bytes. */
export function readBindStatement(msg: Buffer): { portal: string; statement: string; restOffset: number } {
  const [portal, s] = readCString(msg, 5);
  const [statement, rest] = readCString(msg, s);
  return { portal, statement, restOffset: rest };
}

/** The Bind with another statement name: one allocation, the rest copied as bytes. */
export function rewriteBindStatement(msg: Buffer, statement: string): Buffer {
  const portalEnd = msg.indexOf(0, 5) + 1;
  const restOffset = msg.indexOf(0, portalEnd) + 1;
  if (portalEnd === 0 || restOffset === 0) throw new RangeError('unterminated string in message');
  const nameBytes = Buffer.byteLength(statement);
  const out = Buffer.allocUnsafe(msg.length - (restOffset - portalEnd) + nameBytes + 1);
  out[0] = 0x42;
  out.writeInt32BE(out.length - 1, 1);
  let o = 5 + msg.copy(out, 5, 5, portalEnd);
  o += out.write(statement, o);
  out[o++] = 0;
  msg.copy(out, o, restOffset);
  return out;
}

/** Bind ('B') with no parameters and text results. */
export function buildBind(portal: string, statement: string): Buffer {
  return build(0x42, [cstr(portal), cstr(statement), Buffer.from([0, 0, 0, 0, 0, 0])]);
}

/** Execute ('E') of a portal, all rows. */
export function buildExecute(portal: string): Buffer {
  return build(0x45, [cstr(portal), Buffer.from([0, 0, 0, 0])]);
}

/** Describe ('D') and Close ('C'): 'S' or 'P', then a name. */
export function readTarget(msg: Buffer): { kind: 'S' | 'P'; name: string } {
  const kind = String.fromCharCode(msg[5]) as 'S' | 'P';
  const [name] = readCString(msg, 6);
  return { kind, name };
}

export function buildTarget(type: 'D' | 'C', kind: 'S' | 'P', name: string): Buffer {
  return build(type.charCodeAt(0), [Buffer.from(kind, 'latin1'), cstr(name)]);
}

/** Query ('Q'): the SQL text. */
export function readQuery(msg: Buffer): string {
  if (lastQuery?.msg === msg) return lastQuery.sql;
  const sql = readCString(msg, 5)[0];
  lastQuery = { msg, sql };
  return sql;
}

export function buildQuery(sql: string): Buffer {
  return build(0x51, [cstr(sql)]);
}
