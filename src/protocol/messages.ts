// Reading and writing the few frontend messages whose contents the proxy
// must change: Parse, Bind, Describe and Close carry a statement name, and
// Query carries SQL that may hold session state. Every function takes or
// returns a whole message: type byte, int32 length (excluding the type
// byte), body.
//
// Client bytes are checked once, at the door, by frontendProblem(): it
// returns why a message is malformed instead of throwing, and a message it
// passes has every field the readers below look for. The readers never
// throw either: on a message that was not checked they read what is there.

import { MEMO_MAX_BYTES } from '../io/views.js';

/** The offset just past the terminator of the string at `offset`, or -1 when it has none. */
function stringEnd(buf: Buffer, offset: number): number {
  const n = buf.length;
  // Names are short or empty: a loop costs less than a call into Buffer.indexOf.
  const stop = Math.min(n, offset + 32);
  for (let i = offset; i < stop; i++) if (buf[i] === 0) return i + 1;
  if (stop >= n) return -1;
  const end = buf.indexOf(0, stop);
  return end < 0 ? -1 : end + 1;
}

/** A null-terminated string at `offset`; returns the string and the offset after its terminator (the end when it has none). */
export function readCString(buf: Buffer, offset: number): [string, number] {
  const end = stringEnd(buf, offset);
  if (end < 0) return [buf.toString('utf8', Math.min(offset, buf.length)), buf.length];
  return [buf.toString('utf8', offset, end - 1), end];
}

/** Names of the frontend messages whose contents the proxy reads, for errors. */
const READ_MESSAGES: Record<number, string> = {
  0x51: 'Query',
  0x50: 'Parse',
  0x42: 'Bind',
  0x44: 'Describe',
  0x43: 'Close',
};

/**
 * Why a whole frontend message whose contents the proxy reads (Query,
 * Parse, Bind, Describe, Close) is malformed, as PostgreSQL's own parser
 * would find it; null when it is well-formed or of a type the proxy only
 * forwards (the server judges those itself).
 */
export function frontendProblem(msg: Buffer): string | null {
  const kind = READ_MESSAGES[msg[0]];
  if (kind === undefined) return null;
  const why = bodyProblem(msg);
  return why === null ? null : `malformed ${kind} message: ${why}`;
}

function bodyProblem(msg: Buffer): string | null {
  const n = msg.length;
  switch (msg[0]) {
    case 0x51: {
      // Query: the SQL, and nothing after it.
      const end = stringEnd(msg, 5);
      if (end < 0) return 'query string is not null-terminated';
      return end === n ? null : 'bytes after the query string';
    }
    case 0x50: {
      // Parse: name\0 query\0 int16 count, count x int32 type oid.
      const nameEnd = stringEnd(msg, 5);
      if (nameEnd < 0) return 'statement name is not null-terminated';
      const queryEnd = stringEnd(msg, nameEnd);
      if (queryEnd < 0) return 'query string is not null-terminated';
      if (queryEnd + 2 > n) return 'no parameter type count';
      const count = msg.readUInt16BE(queryEnd);
      const size = queryEnd + 2 + 4 * count;
      if (size > n) return `${count} parameter types declared, ${Math.floor((n - queryEnd - 2) / 4)} present`;
      return size === n ? null : 'bytes after the parameter types';
    }
    case 0x42: {
      // Bind: portal\0 statement\0, int16 formats, int16 values each an
      // int32 length (-1 for NULL) and its bytes, int16 result formats.
      const portalEnd = stringEnd(msg, 5);
      if (portalEnd < 0) return 'portal name is not null-terminated';
      let i = stringEnd(msg, portalEnd);
      if (i < 0) return 'statement name is not null-terminated';
      if (i + 2 > n) return 'no parameter format count';
      i += 2 + 2 * msg.readUInt16BE(i);
      if (i + 2 > n) return 'parameter formats past the end of the message';
      const values = msg.readUInt16BE(i);
      i += 2;
      for (let v = 1; v <= values; v++) {
        if (i + 4 > n) return `parameter ${v} of ${values} past the end of the message`;
        const length = msg.readInt32BE(i);
        i += 4;
        if (length === -1) continue;
        if (length < 0) return `parameter ${v} has invalid length ${length}`;
        if (length > n - i) return `parameter ${v} (${length} bytes) past the end of the message`;
        i += length;
      }
      if (i + 2 > n) return 'no result format count';
      i += 2 + 2 * msg.readUInt16BE(i);
      if (i > n) return 'result formats past the end of the message';
      return i === n ? null : 'bytes after the result formats';
    }
    case 0x44:
    case 0x43: {
      // Describe, Close: 'S' or 'P', then a name.
      if (n < 6) return 'no target type';
      const end = stringEnd(msg, 6);
      if (end < 0) return 'name is not null-terminated';
      return end === n ? null : 'bytes after the name';
    }
  }
  return null;
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
  // Never a large message: the memo would keep its memory alive.
  lastParse = msg.buffer.byteLength <= MEMO_MAX_BYTES ? { msg, parsed } : null;
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
  // On a checked Bind both names are there; on other bytes, what is missing is empty.
  const portalEnd = Math.max(5, readCString(msg, 5)[1]);
  const restOffset = Math.max(portalEnd, readCString(msg, portalEnd)[1]);
  const rest = Math.max(0, msg.length - restOffset);
  const nameBytes = Buffer.byteLength(statement);
  const out = Buffer.allocUnsafe(portalEnd + nameBytes + 1 + rest);
  out[0] = 0x42;
  out.writeInt32BE(out.length - 1, 1);
  // portalEnd > 5 only when the message has a portal name to copy.
  let o = 5 + (portalEnd > 5 ? msg.copy(out, 5, 5, portalEnd) : 0);
  o += out.write(statement, o);
  out[o++] = 0;
  if (rest > 0) msg.copy(out, o, restOffset);
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
  const kind = String.fromCharCode(msg[5] ?? 0) as 'S' | 'P';
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
  lastQuery = msg.buffer.byteLength <= MEMO_MAX_BYTES ? { msg, sql } : null;
  return sql;
}

export function buildQuery(sql: string): Buffer {
  return build(0x51, [cstr(sql)]);
}

/** Flush ('H'): the server sends what it has without waiting for a Sync. */
export const FLUSH = Buffer.from([0x48, 0, 0, 0, 4]);

/** The shape NoData stands for: a statement that returns no rows. */
export const NO_ROWS = '';

/**
 * The result shape in a RowDescription ('T') at [start, end) of `buf`:
 * each column's name, type and type modifier. Table OIDs and column numbers
 * are left out: PostgreSQL compares only what a result row looks like when
 * it checks that a prepared statement still returns the same rows.
 */
export function rowShape(buf: Buffer, start: number, end: number): string {
  if (end - start < 7) return '?';
  const n = buf.readUInt16BE(start + 5);
  let i = start + 7;
  let shape = `${n}`;
  for (let k = 0; k < n; k++) {
    const nameEnd = stringEnd(buf, i) - 1;
    if (nameEnd < 0 || nameEnd + 19 > end) return '?';
    shape += `\u0001${buf.toString('utf8', i, nameEnd)}\u0000${buf.readUInt32BE(nameEnd + 7)}\u0000${buf.readInt32BE(nameEnd + 13)}`;
    i = nameEnd + 19;
  }
  return shape;
}

/**
 * The ErrorResponse ('E') at [start, end) of `buf` with its message field
 * ('M') replaced, when its SQLSTATE ('C') is `code`; null when it is not,
 * or when its fields do not parse. Every other field (severity, file, line,
 * routine) is kept as the server sent it.
 */
export function rewordError(buf: Buffer, start: number, end: number, code: string, message: string): Buffer | null {
  const fields: Buffer[] = [];
  let matched = false;
  let i = start + 5;
  while (i < end && buf[i] !== 0) {
    const valueEnd = buf.indexOf(0, i + 1);
    if (valueEnd < 0 || valueEnd >= end) return null;
    if (buf[i] === 0x43) matched = buf.toString('latin1', i + 1, valueEnd) === code;
    fields.push(buf[i] === 0x4d ? cstr(`M${message}`) : buf.subarray(i, valueEnd + 1));
    i = valueEnd + 1;
  }
  if (!matched || i >= end) return null;
  fields.push(ZERO);
  return build(0x45, fields);
}

const ZERO = Buffer.from([0]);
