// budget/waiterQueue.ts: FIFO order, removal from anywhere, and no links
// left on a waiter that has left.
import t from 'tap';
import { WaiterQueue, type Linked } from '../../src/budget/waiterQueue.js';

interface W extends Linked {
  id: number;
}

const ids = (q: WaiterQueue<W>) => [...q.values()].map((w) => w.id);

t.test('first in, first out; removal from the front, middle and back', async (t) => {
  const q = new WaiterQueue<W>();
  const ws: W[] = Array.from({ length: 5 }, (_, i) => ({ id: i }));
  for (const w of ws) q.push(w);
  t.equal(q.size, 5);
  t.same(ids(q), [0, 1, 2, 3, 4]);
  t.equal(q.first(), ws[0]);
  t.equal(q.next(ws[1]), ws[2]);
  t.ok(q.delete(ws[0]));
  t.ok(q.delete(ws[2]));
  t.ok(q.delete(ws[4]));
  t.notOk(q.delete(ws[4]), 'twice: false');
  t.same(ids(q), [1, 3]);
  t.equal(q.size, 2);
  t.notOk(q.has(ws[0]));
  t.ok(q.has(ws[1]));
  t.equal(ws[2].qNext, null, 'a removed waiter points to no other');
  t.equal(ws[2].qPrev, null);
  q.push(ws[1]); // already queued: nothing changes
  t.same(ids(q), [1, 3]);
  q.unshift(ws[0]);
  t.same(ids(q), [0, 1, 3]);
  q.delete(ws[0]);
  q.delete(ws[1]);
  q.delete(ws[3]);
  t.equal(q.size, 0);
  t.equal(q.first(), null);
  t.same(ids(q), []);
  q.push(ws[4]);
  t.same(ids(q), [4], 'usable again once empty');
});

t.test('the waiter just visited may leave during a walk', async (t) => {
  const q = new WaiterQueue<W>();
  for (let i = 0; i < 6; i++) q.push({ id: i });
  const seen: number[] = [];
  for (const w of q.values()) {
    seen.push(w.id);
    if (w.id % 2 === 0) q.delete(w);
  }
  t.same(seen, [0, 1, 2, 3, 4, 5]);
  t.same(ids(q), [1, 3, 5]);
});

t.test('matches an array model over many random operations', async (t) => {
  const q = new WaiterQueue<W>();
  const model: W[] = [];
  const pool: W[] = Array.from({ length: 50 }, (_, i) => ({ id: i }));
  let seed = 7;
  const rand = (n: number) => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) % n);
  let mismatches = 0;
  for (let step = 0; step < 20000; step++) {
    const w = pool[rand(pool.length)];
    const op = rand(3);
    if (op === 0 && !model.includes(w)) (q.push(w), model.push(w));
    else if (op === 1 && !model.includes(w)) (q.unshift(w), model.unshift(w));
    else if (op === 2) {
      const i = model.indexOf(w);
      if (q.delete(w) !== i >= 0) mismatches++;
      if (i >= 0) model.splice(i, 1);
    }
    if (q.size !== model.length || q.first() !== (model[0] ?? null)) mismatches++;
  }
  t.equal(mismatches, 0);
  t.same(ids(q), model.map((w) => w.id));
});
