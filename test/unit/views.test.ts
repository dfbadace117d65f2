import t from 'tap';
import { copyOut } from '../../src/io/handles.js';
import { sliceOf } from '../../src/io/views.js';

// Buffers made every way the proxy makes them: from the shared pool, on their
// own, on the V8 heap (small Buffer.alloc), from strings, concatenated, and
// views of views.
function sources(): Buffer[] {
  const pooled = Buffer.allocUnsafe(300).fill(1);
  for (let i = 0; i < pooled.length; i++) pooled[i] = i & 0xff;
  const big = Buffer.allocUnsafeSlow(10_000);
  for (let i = 0; i < big.length; i++) big[i] = (i * 7) & 0xff;
  return [pooled, big, Buffer.alloc(40, 3), Buffer.from('select abalance from pgbench_accounts where aid = $1'), Buffer.concat([pooled, big]), big.subarray(100, 900)];
}

t.test('sliceOf is subarray: same bytes, same memory, a Buffer', async (t) => {
  let checked = 0;
  for (const src of sources()) {
    for (let k = 0; k < 200; k++) {
      const start = Math.floor(Math.random() * (src.length + 1));
      const end = start + Math.floor(Math.random() * (src.length - start + 1));
      // Alternate sources between calls too: the per-chunk memo must follow the chunk.
      const other = sources()[k % 6];
      sliceOf(other, 0, other.length);
      const view = sliceOf(src, start, end);
      const expected = src.subarray(start, end);
      if (!(view instanceof Buffer) || !view.equals(expected) || view.buffer !== expected.buffer || view.byteOffset !== expected.byteOffset) {
        t.fail(`slice ${start}..${end} of a ${src.length}-byte buffer`);
        return;
      }
      checked++;
    }
  }
  t.equal(checked, 1200, 'every slice matched subarray');
  const src = Buffer.from('abcdef');
  const view = sliceOf(src, 2, 4);
  view[0] = 0x58;
  t.equal(src.toString(), 'abXdef', 'a view, not a copy');
  t.equal(view.readUInt8(1), 0x64, 'Buffer methods work on it');
  t.equal(sliceOf(src, 3, 3).length, 0, 'empty slice');
});

t.test('copyOut copies the first n bytes, at every length, into a Buffer of its own', async (t) => {
  const from = Buffer.allocUnsafe(64 * 1024);
  for (let i = 0; i < from.length; i++) from[i] = (i * 13) & 0xff;
  for (const n of [1, 2, 5, 60, 4095, 4096, 4097, 40_000, 64 * 1024]) {
    const copy = copyOut(from, n);
    t.ok(copy.equals(from.subarray(0, n)), `${n} bytes`);
  }
  const copy = copyOut(from, 100);
  from[0] ^= 0xff;
  t.not(copy[0], from[0], 'the copy does not follow later reads');
  const again = copyOut(from, 100);
  t.equal(again[0], from[0], 'a second copy of the same length sees the new bytes');
  const other = Buffer.from('another read buffer');
  t.equal(copyOut(other, 7).toString(), 'another', 'another source buffer is not confused with the first');
  t.equal(copyOut(from, 100)[0], from[0], 'and back to the first');
});
