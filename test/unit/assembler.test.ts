import t from 'tap';
import { MessageAssembler } from '../../src/protocol/assembler.js';
import { msg } from '../helpers/wire.js';

const messages = [msg('P', 'stmt\0select $1\0\0\0'), msg('B', Buffer.alloc(40, 2)), msg('S'), msg('Q', 'select 1\0'), msg('d', Buffer.alloc(3000, 9))];
const stream = Buffer.concat(messages);

function assemble(chunks: Buffer[]) {
  const a = new MessageAssembler();
  const out: Buffer[] = [];
  const boundaries: boolean[] = [];
  for (const c of chunks) {
    a.push(c, out);
    boundaries.push(a.atBoundary);
  }
  return { out, boundaries, a };
}

t.test('every split offset into two chunks gives the same whole messages', async (t) => {
  for (let cut = 0; cut <= stream.length; cut++) {
    const { out, a } = assemble([stream.subarray(0, cut), stream.subarray(cut)]);
    if (out.length !== messages.length || !out.every((m, i) => m.equals(messages[i]))) {
      t.fail(`split at ${cut}`);
      return;
    }
    if (!a.atBoundary) t.fail(`not at a boundary after split ${cut}`);
  }
  t.pass('all split offsets');
});

t.test('byte at a time', async (t) => {
  const chunks = [...stream].map((b) => Buffer.from([b]));
  const { out, a } = assemble(chunks);
  t.same(out.map((m) => m.toString('hex')), messages.map((m) => m.toString('hex')));
  t.ok(a.atBoundary);
});

t.test('messages inside one chunk are views of it, not copies', async (t) => {
  const { out } = assemble([stream]);
  t.ok(out.every((m) => m.buffer === stream.buffer));
});

t.test('atBoundary is false while a message is incomplete', async (t) => {
  const first = messages[0];
  const { boundaries } = assemble([first.subarray(0, 3), first.subarray(3, 8), first.subarray(8)]);
  t.same(boundaries, [false, false, true]);
});

t.test('nonsense lengths are rejected, also when the header is split', async (t) => {
  for (const bytes of [
    [0x51, 0, 0, 0, 3],
    [0x51, 0xff, 0xff, 0xff, 0xff],
  ]) {
    for (let cut = 0; cut < 5; cut++) {
      const a = new MessageAssembler();
      const out: Buffer[] = [];
      const first = a.push(Buffer.from(bytes.slice(0, cut)), out);
      const error = first ?? a.push(Buffer.from(bytes.slice(cut)), out);
      t.match(error, { name: 'FrameError' }, `${bytes.join(',')} split at ${cut}`);
    }
  }
  t.match(new MessageAssembler(50).push(msg('Q', Buffer.alloc(100)), [])?.message, /invalid message length 104/);
});
