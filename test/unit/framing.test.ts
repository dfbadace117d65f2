import t from 'tap';
import { FrameError, FrameScanner } from '../../src/protocol/framing.js';
import { msg } from '../helpers/wire.js';

const stream = Buffer.concat([
  msg('T', Buffer.alloc(30, 1)),
  msg('D', 'row one'),
  msg('C', 'SELECT 1\0'),
  msg('Z', 'I'),
  msg('S'), // empty body (Sync from a client)
  msg('Z', 'T'),
  msg('D', Buffer.alloc(5000, 7)),
  msg('Z', 'E'),
]);
const expected = [
  ['T', 1],
  ['D', 'r'.charCodeAt(0)],
  ['C', 'S'.charCodeAt(0)],
  ['Z', 'I'.charCodeAt(0)],
  ['S', -1],
  ['Z', 'T'.charCodeAt(0)],
  ['D', 7],
  ['Z', 'E'.charCodeAt(0)],
];

function scanChunks(chunks: Buffer[]) {
  const seen: [string, number][] = [];
  const ends: number[] = [];
  const s = new FrameScanner((type, first, end) => {
    seen.push([String.fromCharCode(type), first]);
    ends.push(end);
  });
  for (const c of chunks) s.scan(c);
  return { seen, ends, s };
}

t.test('whole stream in one chunk', async (t) => {
  const { seen, s } = scanChunks([stream]);
  t.same(seen, expected);
  t.ok(s.atBoundary);
});

t.test('every split offset into two chunks gives the same messages', async (t) => {
  for (let i = 1; i < stream.length; i++) {
    const { seen, s } = scanChunks([stream.subarray(0, i), stream.subarray(i)]);
    if (JSON.stringify(seen) !== JSON.stringify(expected)) t.fail(`split at ${i}: ${JSON.stringify(seen)}`);
    if (!s.atBoundary) t.fail(`not at boundary after split at ${i}`);
  }
  t.pass('all splits agree');
});

t.test('split into three chunks at the start, middle and end of each message', async (t) => {
  const cuts = [1, 3, 5, 6, 38, 40, 52, 60, 66, 70, 75];
  for (const a of cuts) {
    for (const b of cuts) {
      if (b <= a) continue;
      const { seen } = scanChunks([stream.subarray(0, a), stream.subarray(a, b), stream.subarray(b)]);
      t.same(seen, expected, `cuts ${a},${b}`);
    }
  }
});

t.test('byte at a time', async (t) => {
  const chunks = [...stream].map((b) => Buffer.from([b]));
  const { seen } = scanChunks(chunks);
  t.same(seen, expected);
});

t.test('end offsets point just past each message in its chunk', async (t) => {
  const { ends } = scanChunks([stream]);
  let pos = 0;
  const lengths: number[] = [];
  while (pos < stream.length) {
    pos += 1 + stream.readInt32BE(pos + 1);
    lengths.push(pos);
  }
  t.same(ends, lengths);
});

t.test('boundary and pending header bytes mid-stream', async (t) => {
  const s = new FrameScanner(() => {});
  s.scan(stream.subarray(0, 3));
  t.equal(s.pendingHeaderBytes, 3);
  t.notOk(s.atBoundary);
  s.scan(stream.subarray(3, 10));
  t.equal(s.pendingHeaderBytes, 0);
  t.notOk(s.atBoundary);
});

t.test('nonsense lengths are rejected', async (t) => {
  const bad = Buffer.from([0x51, 0, 0, 0, 3]);
  t.type(new FrameScanner(() => {}).scan(bad), FrameError);
  const negative = Buffer.from([0x51, 0xff, 0xff, 0xff, 0xff]);
  t.type(new FrameScanner(() => {}).scan(negative), FrameError);
  const big = msg('Q', Buffer.alloc(100));
  t.match(new FrameScanner(() => {}, 50).scan(big)?.message, /invalid message length 104/);
  t.equal(new FrameScanner(() => {}, 200).scan(big), null);
});

t.test('a nonsense length split across chunks is read as the same int32', async (t) => {
  for (const [bytes, length] of [
    [[0x51, 0xff, 0xff, 0xff, 0xff], -1],
    [[0x51, 0x80, 0, 0, 0], -0x80000000],
    [[0x51, 0, 0, 0, 3], 3],
  ] as const) {
    for (let cut = 1; cut < 5; cut++) {
      const s = new FrameScanner(() => {});
      t.equal(s.scan(Buffer.from(bytes.slice(0, cut))), null);
      t.match(s.scan(Buffer.from(bytes.slice(cut))), { name: 'FrameError', length }, `split at ${cut}`);
    }
  }
});
