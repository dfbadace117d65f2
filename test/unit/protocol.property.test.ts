// Property-based tests for everything that reads bytes from a peer: the
// header-only scanner, the whole-message assembler, the startup-phase
// packets (startup, SSL, GSSENC, cancel), the frontend message checks and
// readers, the SQL word scan, and the rewording of a server's error. Inputs are random bytes, random mutations
// of valid streams, and random chunk splits. The only failure any of them
// may report is its declared protocol error, and none keeps more than one
// message's worth of bytes.
import fc from 'fast-check';
import t from 'tap';
import { MessageAssembler } from '../../src/protocol/assembler.js';
import { FrameError, FrameScanner } from '../../src/protocol/framing.js';
import {
  buildParse,
  buildQuery,
  buildTarget,
  frontendProblem,
  readBindStatement,
  readParse,
  readQuery,
  readTarget,
  rewordError,
  rewriteBindStatement,
} from '../../src/protocol/messages.js';
import { errorResponse } from '../../src/protocol/encode.js';
import { parseStartupPacket, startupPacketLength, StartupPacketError, TERMINATE_BEFORE_STARTUP } from '../../src/protocol/startup.js';
import { messageSqlWords } from '../../src/client/sqlWords.js';
import { splits } from '../helpers/arbitraries.js';
import { msg, startupPacket } from '../helpers/wire.js';

const RUNS = { numRuns: 1500 };

// ---- generators ----

const name = fc.oneof(fc.constant(''), fc.stringMatching(/^[a-z_][a-z0-9_]{0,12}$/));
const sql = fc.oneof(
  fc.constantFrom('select 1', 'begin', 'commit', 'SET x = 1', 'listen a', 'deallocate all', 'select $1::int', 'discard all'),
  fc.string({ maxLength: 40 }).map((s) => s.replace(/\0/g, '')),
);

/** A valid Bind: formats, values (NULL or bytes), result formats. */
const bind = fc
  .record({
    portal: name,
    statement: name,
    formats: fc.array(fc.integer({ min: 0, max: 1 }), { maxLength: 3 }),
    values: fc.array(fc.option(fc.uint8Array({ maxLength: 12 }), { nil: null }), { maxLength: 4 }),
    results: fc.array(fc.integer({ min: 0, max: 1 }), { maxLength: 3 }),
  })
  .map(({ portal, statement, formats, values, results }) => {
    const parts: Buffer[] = [Buffer.from(`${portal}\0${statement}\0`)];
    const i16 = (n: number) => {
      const b = Buffer.alloc(2);
      b.writeUInt16BE(n);
      return b;
    };
    const i32 = (n: number) => {
      const b = Buffer.alloc(4);
      b.writeInt32BE(n);
      return b;
    };
    parts.push(i16(formats.length), ...formats.map(i16), i16(values.length));
    for (const v of values) parts.push(v === null ? i32(-1) : Buffer.concat([i32(v.length), Buffer.from(v)]));
    parts.push(i16(results.length), ...results.map(i16));
    return msg('B', Buffer.concat(parts));
  });

/** Any well-formed frontend message a client may send after login. */
const frontendMessage: fc.Arbitrary<Buffer> = fc.oneof(
  sql.map((s) => buildQuery(s)),
  fc.tuple(name, sql, fc.array(fc.integer({ min: 0, max: 5000 }), { maxLength: 3 })).map(([n, q, types]) => {
    const t = Buffer.alloc(2 + 4 * types.length);
    t.writeUInt16BE(types.length);
    types.forEach((oid, i) => t.writeInt32BE(oid, 2 + 4 * i));
    return buildParse(n, q, t);
  }),
  bind,
  fc.tuple(fc.constantFrom('D' as const, 'C' as const), fc.constantFrom('S' as const, 'P' as const), name).map(([ty, k, n]) => buildTarget(ty, k, n)),
  fc.tuple(name, fc.integer({ min: 0, max: 10 })).map(([portal, rows]) => {
    const b = Buffer.alloc(Buffer.byteLength(portal) + 5);
    b.write(portal);
    b.writeInt32BE(rows, b.length - 4);
    return msg('E', b);
  }),
  fc.constantFrom(msg('S'), msg('H'), msg('c'), msg('X')),
  fc.uint8Array({ maxLength: 30 }).map((b) => msg('d', Buffer.from(b))),
  sql.map((s) => msg('f', `${s}\0`)),
);

/** A buffer changed in a few random ways: bytes flipped, cut, inserted, or a length overwritten. */
function mutated(base: fc.Arbitrary<Buffer>): fc.Arbitrary<Buffer> {
  const mutation = fc.oneof(
    fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
    fc.record({ kind: fc.constant('cut' as const), at: fc.nat() }),
    fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 8 }) }),
    fc.record({ kind: fc.constant('length' as const), at: fc.nat(), value: fc.integer() }),
  );
  return fc.tuple(base, fc.array(mutation, { minLength: 1, maxLength: 3 })).map(([buf, ms]) => {
    let b = Buffer.from(buf);
    for (const m of ms) {
      const at = b.length === 0 ? 0 : m.at % b.length;
      if (m.kind === 'flip' && b.length > 0) b[at] = m.value;
      else if (m.kind === 'cut') b = b.subarray(0, at);
      else if (m.kind === 'insert') b = Buffer.concat([b.subarray(0, at), Buffer.from(m.bytes), b.subarray(at)]);
      else if (m.kind === 'length' && b.length >= at + 4) b.writeInt32BE(m.value, at);
    }
    return b;
  });
}


const validStream = fc.array(frontendMessage, { minLength: 1, maxLength: 8 });
const streamAndSplits = validStream.chain((ms) => {
  const stream = Buffer.concat(ms);
  return fc.tuple(fc.constant(ms), splits(stream));
});
const hostileStream = fc.oneof(fc.uint8Array({ maxLength: 200 }).map((b) => Buffer.from(b)), mutated(validStream.map((ms) => Buffer.concat(ms))));
const hostileAndSplits = hostileStream.chain((b) => fc.tuple(fc.constant(b), splits(b)));

// ---- the scanner and the assembler ----

t.test('FrameScanner: any split of a valid stream reports the same messages', async (t) => {
  fc.assert(
    fc.property(streamAndSplits, ([messages, chunks]) => {
      const seen: number[] = [];
      const s = new FrameScanner((type) => seen.push(type));
      for (const c of chunks) if (s.scan(c) !== null) return false;
      return s.atBoundary && seen.length === messages.length && seen.every((type, i) => type === messages[i][0]);
    }),
    RUNS,
  );
});

t.test('FrameScanner: random and mutated bytes, any split: a FrameError or nothing, never a throw', async (t) => {
  fc.assert(
    fc.property(hostileAndSplits, fc.integer({ min: 5, max: 300 }), ([, chunks], max) => {
      const s = new FrameScanner(() => {}, max);
      for (const c of chunks) {
        const r = s.scan(c);
        if (r !== null) return r instanceof FrameError;
        // Between chunks it holds at most a header.
        if (s.pendingHeaderBytes > 4) return false;
      }
      return true;
    }),
    RUNS,
  );
});

t.test('MessageAssembler: any split of a valid stream yields the same whole messages', async (t) => {
  fc.assert(
    fc.property(streamAndSplits, ([messages, chunks]) => {
      const a = new MessageAssembler();
      const out: Buffer[] = [];
      for (const c of chunks) if (a.push(c, out) !== null) return false;
      return a.atBoundary && out.length === messages.length && out.every((m, i) => m.equals(messages[i]));
    }),
    RUNS,
  );
});

t.test('MessageAssembler: random and mutated bytes, any split: a FrameError or whole messages, holding at most one', async (t) => {
  fc.assert(
    fc.property(hostileAndSplits, fc.integer({ min: 5, max: 300 }), ([stream, chunks], max) => {
      const a = new MessageAssembler(max);
      const out: Buffer[] = [];
      let consumed = 0;
      for (const c of chunks) {
        const r = a.push(c, out);
        if (r !== null) return r instanceof FrameError;
        const held = (a as unknown as { have: number }).have;
        if (held > max + 1) return false;
      }
      // Whatever came out is the stream's own messages, in order.
      for (const m of out) {
        if (!m.equals(stream.subarray(consumed, consumed + m.length))) return false;
        consumed += m.length;
      }
      return true;
    }),
    RUNS,
  );
});

// ---- startup-phase packets ----

const startupParams = fc.dictionary(fc.stringMatching(/^[a-z_]{1,10}$/), fc.string({ maxLength: 12 }).map((s) => s.replace(/\0/g, '')), { maxKeys: 4 });
const goodStartup = fc.tuple(fc.stringMatching(/^[a-z]{1,8}$/), startupParams).map(([user, params]) => startupPacket({ ...params, user }));
function request(code: number, junk: Uint8Array): Buffer {
  const b = Buffer.alloc(8 + junk.length);
  b.writeInt32BE(b.length, 0);
  b.writeInt32BE(code, 4);
  Buffer.from(junk).copy(b, 8);
  return b;
}
const requests = fc.tuple(fc.constantFrom(80877103, 80877104, 80877102), fc.uint8Array({ maxLength: 16 })).map(([code, junk]) => request(code, junk));
const startupInput = fc.oneof(
  goodStartup,
  mutated(goodStartup),
  requests,
  mutated(requests),
  fc.uint8Array({ maxLength: 64 }).map((b) => Buffer.from(b)),
);

t.test('startup-phase packets: only StartupPacketError, for any bytes', async (t) => {
  fc.assert(
    fc.property(startupInput, (buf) => {
      let length: number;
      try {
        length = startupPacketLength(buf);
      } catch (err) {
        return err instanceof StartupPacketError;
      }
      if (length === -1 || length === TERMINATE_BEFORE_STARTUP) return true;
      if (length < 8 || buf.length < length) return length >= 8;
      try {
        const p = parseStartupPacket(buf.subarray(0, length));
        return ['startup', 'ssl', 'gssenc', 'cancel'].includes(p.kind);
      } catch (err) {
        return err instanceof StartupPacketError;
      }
    }),
    { numRuns: 4000 },
  );
});

t.test('startup packets: parameters come back as sent, and a repeat gets the same parse', async (t) => {
  fc.assert(
    fc.property(fc.stringMatching(/^[a-z]{1,8}$/), startupParams, (user, params) => {
      const pkt = startupPacket({ ...params, user });
      const p = parseStartupPacket(pkt);
      const again = parseStartupPacket(Buffer.from(pkt));
      if (p.kind !== 'startup' || again !== p) return false;
      return Object.entries({ ...params, user }).every(([k, v]) => k.startsWith('_pq_.') || p.params[k] === v);
    }),
    RUNS,
  );
});

// ---- frontend message checks and readers ----

const readTypes = fc.constantFrom(0x51, 0x50, 0x42, 0x44, 0x43);
const hostileMessage = fc.oneof(
  frontendMessage,
  mutated(frontendMessage).map((m) => (m.length >= 5 ? fixLength(m) : m)),
  fc.tuple(readTypes, fc.uint8Array({ maxLength: 40 })).map(([type, body]) => fixLength(Buffer.concat([Buffer.from([type, 0, 0, 0, 0]), Buffer.from(body)]))),
);

/** A whole message as the assembler hands it out: its length field matches its size. */
function fixLength(m: Buffer): Buffer {
  const b = Buffer.from(m);
  if (b.length >= 5) b.writeInt32BE(b.length - 1, 1);
  return b;
}

t.test('frontendProblem: never throws; what it passes, every reader reads without throwing', async (t) => {
  fc.assert(
    fc.property(hostileMessage, name, (m, newName) => {
      if (m.length < 5) return true; // the assembler never hands these out
      const problem = frontendProblem(m);
      if (problem !== null) return typeof problem === 'string' && problem.startsWith('malformed ');
      switch (m[0]) {
        case 0x51:
          readQuery(m);
          break;
        case 0x50:
          readParse(m);
          break;
        case 0x42: {
          const { statement, restOffset } = readBindStatement(m);
          const renamed = rewriteBindStatement(m, newName);
          // A well-formed Bind stays well-formed, with only its statement name changed.
          if (frontendProblem(renamed) !== null || readBindStatement(renamed).statement !== newName) return false;
          if (!renamed.subarray(renamed.length - (m.length - restOffset)).equals(m.subarray(restOffset))) return false;
          if (typeof statement !== 'string') return false;
          break;
        }
        case 0x44:
        case 0x43:
          readTarget(m);
          break;
      }
      return true;
    }),
    { numRuns: 4000 },
  );
});

t.test('frontendProblem passes every well-formed message', async (t) => {
  fc.assert(
    fc.property(frontendMessage, (m) => frontendProblem(m) === null),
    RUNS,
  );
});

t.test('readers on unchecked bytes read what is there, never throw', async (t) => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 30 }), (body) => {
      const m = Buffer.from(body);
      readQuery(m);
      readParse(m);
      readBindStatement(m);
      readTarget(m);
      rewriteBindStatement(m, 'x');
      messageSqlWords(m);
      return true;
    }),
    RUNS,
  );
});

t.test('SQL word scan: any bytes, never throws, same answer on a copy', async (t) => {
  fc.assert(
    fc.property(hostileMessage, (m) => {
      const w = messageSqlWords(m);
      return Number.isInteger(w) && w === messageSqlWords(Buffer.from(m));
    }),
    RUNS,
  );
});

/** ErrorResponse fields as a server sends them: a few known letters with text values. */
const errorFields = fc.record({
  severity: fc.constantFrom('ERROR', 'FATAL'),
  code: fc.constantFrom('57014', '25P02', '42601', 'XX000'),
  message: fc.string({ maxLength: 60 }).map((s) => s.replace(/\0/g, '')),
  detail: fc.option(fc.string({ maxLength: 30 }).map((s) => s.replace(/\0/g, '')), { nil: undefined }),
  file: fc.option(fc.constant('postgres.c'), { nil: undefined }),
  routine: fc.option(fc.constant('ProcessInterrupts'), { nil: undefined }),
});

t.test('rewordError: the message replaced only for its SQLSTATE, every other field kept', async (t) => {
  fc.assert(
    fc.property(errorFields, fc.string({ maxLength: 40 }).map((s) => s.replace(/\0/g, '')), (fields, replacement) => {
      const original = errorResponse(fields);
      // Inside a larger chunk, as the reply trimmer hands it over.
      const chunk = Buffer.concat([Buffer.from('Z\0\0\0\x05I'), original, Buffer.from('Z\0\0\0\x05I')]);
      const out = rewordError(chunk, 6, 6 + original.length, '57014', replacement);
      if (fields.code !== '57014') return out === null;
      return out !== null && out.equals(errorResponse({ ...fields, message: replacement }));
    }),
    RUNS,
  );
});

t.test('rewordError: any bytes, never throws, and returns null or one whole ErrorResponse', async (t) => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 80 }), fc.nat(90), fc.nat(90), (bytes, a, b) => {
      const buf = Buffer.from(bytes);
      const start = Math.min(a, buf.length);
      const end = Math.min(Math.max(start, b), buf.length);
      const out = rewordError(buf, start, end, '57014', 'reworded');
      return out === null || (out[0] === 0x45 && out.readInt32BE(1) === out.length - 1 && out[out.length - 1] === 0);
    }),
    RUNS,
  );
});
