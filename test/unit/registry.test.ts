// client/registry.ts: live sessions in reusable slots, found by process id.
import t from 'tap';
import { SessionRegistry } from '../../src/client/registry.js';

class Entry {
  constructor(readonly processId: number) {}
}

function register(r: SessionRegistry<Entry>, random = 0): Entry {
  const e = new Entry(r.nextProcessId(random));
  r.add(e);
  return e;
}

t.test('process ids are unique among live entries, positive int32, and found again', async (t) => {
  const r = new SessionRegistry<Entry>();
  const live: Entry[] = [];
  for (let i = 0; i < 1000; i++) live.push(register(r, (i * 7919) % 1024));
  t.ok(live.every((e) => e.processId > 0 && e.processId <= 0x7fffffff), 'positive int32');
  t.equal(new Set(live.map((e) => e.processId)).size, 1000, 'unique');
  t.equal(r.size, 1000);
  for (const e of live) if (r.get(e.processId) !== e) t.fail(`lost ${e.processId}`);
  t.same(r.values().length, 1000);
});

t.test('a freed slot is reused; a stale process id finds nothing', async (t) => {
  const r = new SessionRegistry<Entry>();
  const a = register(r, 1);
  const b = register(r, 2);
  r.delete(a);
  t.equal(r.size, 1);
  t.equal(r.get(a.processId), undefined, 'gone');
  const c = register(r, 3);
  t.equal(c.processId & 0x1fffff, a.processId & 0x1fffff, 'same slot');
  t.not(c.processId, a.processId, 'different id');
  t.equal(r.get(a.processId), undefined, 'the old id does not reach the new entry');
  t.equal(r.get(c.processId), c);
  t.equal(r.get(b.processId), b);
  r.delete(a); // not there any more: nothing happens
  t.equal(r.size, 2);
  t.same(r.values(), [c, b]);
});

t.test('ids that were never handed out find nothing and cannot be added', async (t) => {
  const r = new SessionRegistry<Entry>();
  register(r);
  t.equal(r.get(0), undefined);
  t.equal(r.get(-1), undefined);
  t.equal(r.get(0x7fffffff), undefined);
  t.throws(() => r.add(new Entry(5)), /not handed out/);
});

t.test('forEach visits every live entry once, also when the callback deletes entries', async (t) => {
  const r = new SessionRegistry<Entry>();
  const all = Array.from({ length: 50 }, (_, i) => register(r, i));
  for (const e of all.filter((_, i) => i % 3 === 0)) r.delete(e);
  const live = all.filter((_, i) => i % 3 !== 0);
  const seen: Entry[] = [];
  r.forEach((e) => {
    seen.push(e);
    r.delete(e); // what a startup timeout does: the session closes during the sweep
  });
  t.same(new Set(seen), new Set(live));
  t.equal(seen.length, live.length, 'each once');
  t.equal(r.size, 0);
});

t.test("ids of the registry's own are above every Linux pid; a server's real pid finds the entry bound to it", async (t) => {
  const r = new SessionRegistry<Entry>();
  const all = [0, 1, 2, 1023, 1024, 5000].map((random) => register(r, random));
  t.ok(all.every((e) => e.processId >= 1 << 22 && e.processId <= 0x7fffffff), 'at least 2^22 (pid_max is at most 2^22), positive int32');
  const [a, b] = all;
  const realPid = 12345;
  t.equal(r.get(realPid), undefined);
  r.bindServerPid(realPid, a);
  t.equal(r.get(realPid), a, 'found by the real pid');
  t.equal(r.get(a.processId), a, 'and by its own');
  // The backend passes to b (a has ended and the connection was reset): a's unbinding, late, leaves b's.
  r.bindServerPid(realPid, b);
  r.unbindServerPid(realPid, a);
  t.equal(r.get(realPid), b);
  r.unbindServerPid(realPid, b);
  t.equal(r.get(realPid), undefined, 'a pid no session holds finds nothing');
});
