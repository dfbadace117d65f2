// Reply trimming under random chunk splits: whatever the server's stream is
// cut into, the client gets exactly the messages that were kept, the
// replacements in place of the replaced ones, and nothing of the dropped
// ones, in order; nothing but a FrameError is ever reported for nonsense,
// and no more than one message is held back.
import fc from 'fast-check';
import t from 'tap';
import { FrameError } from '../../src/protocol/framing.js';
import { DROP, ReplyTrimmer, type ReplyListener } from '../../src/protocol/replies.js';
import { splits } from '../helpers/arbitraries.js';
import { msg } from '../helpers/wire.js';

const TYPES = 'TDCZE123tnGHdcNSA'.split('');

/** A server message, and what the proxy does with it: forward it, drop it, or send other bytes instead. */
const reply = fc.record({
  message: fc.tuple(fc.constantFrom(...TYPES), fc.uint8Array({ maxLength: 40 })).map(([type, body]) => msg(type, Buffer.from(body))),
  fate: fc.oneof(fc.constant<'keep'>('keep'), fc.constant<'drop'>('drop'), fc.uint8Array({ minLength: 1, maxLength: 12 }).map((b) => Buffer.from(b))),
});


const scenario = fc.array(reply, { minLength: 1, maxLength: 10 }).chain((replies) => fc.tuple(fc.constant(replies), splits(Buffer.concat(replies.map((r) => r.message)), 12)));

/**
 * A listener that knows the plan: it holds whole messages while any message
 * not yet complete is to be dropped or replaced (as the session does while
 * the proxy's own answers are due), and checks each message it is shown.
 */
class Plan implements ReplyListener {
  next = 0;
  constructor(readonly replies: { message: Buffer; fate: 'keep' | 'drop' | Buffer }[]) {}
  get holdsWholeMessages(): boolean {
    return this.replies.slice(this.next).some((r) => r.fate !== 'keep');
  }
  onReply(type: number, _first: number, bytes: Buffer, start: number, end: number): Buffer | null {
    const r = this.replies[this.next++];
    if (type !== r.message[0]) throw new Error(`message ${this.next - 1} has type ${type}`);
    if (r.fate === 'keep') return null;
    // A message to leave out is whole in the bytes shown.
    if (start < 0 || !bytes.subarray(start, end).equals(r.message)) throw new Error(`message ${this.next - 1} is not whole`);
    return r.fate === 'drop' ? DROP : r.fate;
  }
}

t.test('ReplyTrimmer: any split gives the client exactly the kept messages and the replacements, in order', async (t) => {
  fc.assert(
    fc.property(scenario, ([replies, chunks]) => {
      const plan = new Plan(replies);
      const trimmer = new ReplyTrimmer(plan);
      trimmer.trims = true;
      const out: Buffer[] = [];
      for (const c of chunks) {
        const r = trimmer.push(c);
        if (r instanceof FrameError) return false;
        out.push(r);
      }
      const expected = Buffer.concat(replies.map((r) => (r.fate === 'keep' ? r.message : r.fate === 'drop' ? DROP : r.fate)));
      return plan.next === replies.length && trimmer.atBoundary && Buffer.concat(out).equals(expected);
    }),
    { numRuns: 3000 },
  );
});

t.test('ReplyTrimmer: with nothing to leave out, bytes go on as they came, holding at most a header', async (t) => {
  fc.assert(
    fc.property(scenario, fc.boolean(), ([replies, chunks], trims) => {
      const trimmer = new ReplyTrimmer({ holdsWholeMessages: false, onReply: () => null });
      trimmer.trims = trims;
      const out: Buffer[] = [];
      let sent = 0;
      let seen = 0;
      for (const c of chunks) {
        const r = trimmer.push(c);
        if (r instanceof FrameError) return false;
        out.push(r);
        sent += r.length;
        seen += c.length;
        if (seen - sent > 4) return false;
      }
      return Buffer.concat(out).equals(Buffer.concat(replies.map((r) => r.message)));
    }),
    { numRuns: 2000 },
  );
});

t.test('ReplyTrimmer: random bytes, any split: a FrameError or bytes, never a throw', async (t) => {
  fc.assert(
    fc.property(
      fc.uint8Array({ maxLength: 200 }).chain((b) => splits(Buffer.from(b), 12)),
      fc.boolean(),
      (chunks, whole) => {
        const trimmer = new ReplyTrimmer({ holdsWholeMessages: whole, onReply: () => null });
        trimmer.trims = true;
        for (const c of chunks) {
          const r = trimmer.push(c);
          if (r instanceof FrameError) return true;
          if (!Buffer.isBuffer(r)) return false;
        }
        return true;
      },
    ),
    { numRuns: 2000 },
  );
});
