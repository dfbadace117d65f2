// fast-check generators shared by the property tests.
import fc from 'fast-check';

/** `buf` cut at up to `maxCuts` random offsets, as a peer's bytes may arrive. */
export function splits(buf: Buffer, maxCuts = 6): fc.Arbitrary<Buffer[]> {
  return fc.uniqueArray(fc.integer({ min: 1, max: Math.max(1, buf.length - 1) }), { maxLength: maxCuts }).map((cuts) => {
    const at = [0, ...cuts.filter((c) => c < buf.length).sort((a, b) => a - b), buf.length];
    const chunks: Buffer[] = [];
    for (let i = 1; i < at.length; i++) if (at[i] > at[i - 1]) chunks.push(Buffer.from(buf.subarray(at[i - 1], at[i])));
    return chunks;
  });
}
