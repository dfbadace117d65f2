// Shares of a budget among instances (coordination), pure: the fair
// division every instance computes alike, the ceiling while Redis answers,
// and the fallback's while it does not.
import t from 'tap';
import fc from 'fast-check';
import { ceilingDown, ceilingUp, fairShares, staticShare, type InstanceDemand } from '../../src/budget/clusterShare.js';

const demands = fc.array(
  fc.record({ instance: fc.stringMatching(/^[a-f]{1,3}$/), held: fc.nat(20), waiting: fc.nat(200) }),
  { maxLength: 6 },
).map((ds) => [...new Map(ds.map((d) => [d.instance, d])).values()]);

t.test('fair shares: within the total and each demand, max-min fair, the same in any order', async (t) => {
  fc.assert(
    fc.property(fc.nat(40), demands, fc.nat(), (total, ds, seed) => {
      const shares = fairShares(total, ds);
      const want = (d: InstanceDemand) => d.held + d.waiting;
      const sum = [...shares.values()].reduce((a, b) => a + b, 0);
      if (sum > total) return false;
      for (const d of ds) if ((shares.get(d.instance) ?? -1) > want(d) || (shares.get(d.instance) ?? -1) < 0) return false;
      // Nothing left over while someone wants more.
      const unmet = ds.some((d) => shares.get(d.instance)! < want(d));
      if (unmet && sum !== total) return false;
      // Max-min: one short of its demand has at least what any other has, less one (the remainder).
      for (const a of ds) {
        if (shares.get(a.instance)! >= want(a)) continue;
        for (const b of ds) if (shares.get(b.instance)! > shares.get(a.instance)! + 1) return false;
      }
      // Every instance computes the same whatever order it lists them in.
      const shuffled = [...ds].sort(() => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) & 1 ? 1 : -1));
      const again = fairShares(total, shuffled);
      return ds.every((d) => again.get(d.instance) === shares.get(d.instance));
    }),
    { numRuns: 3000 },
  );
});

t.test('fair shares: the few get what they ask, the storm the rest', async (t) => {
  const shares = fairShares(8, [
    { instance: 'storm', held: 7, waiting: 100 },
    { instance: 'few', held: 1, waiting: 2 },
  ]);
  t.same(Object.fromEntries(shares), { few: 3, storm: 5 });
  const even = fairShares(8, [
    { instance: 'a', held: 2, waiting: 50 },
    { instance: 'b', held: 2, waiting: 50 },
    { instance: 'c', held: 2, waiting: 50 },
  ]);
  t.same(Object.fromEntries(even), { a: 2, b: 3, c: 3 }, 'the remainder by name, the same on every instance');
});

t.test('ceiling while Redis answers: the room, or the fair share when others wait', async (t) => {
  const self = { instance: 'me', held: 3, waiting: 10 };
  t.equal(ceilingUp({ budget: 8, leases: 5, mine: 3, self, others: [{ instance: 'x', held: 2, waiting: 0 }] }), 6, 'nobody else waits: what it holds plus the room (8 - 5)');
  t.equal(ceilingUp({ budget: 8, leases: 8, mine: 6, self: { instance: 'me', held: 6, waiting: 50 }, others: [{ instance: 'x', held: 2, waiting: 3 }] }), 4, 'another waits: down to its share, 4 of 8 each');
  t.equal(ceilingUp({ budget: 8, leases: 8, mine: 2, self: { instance: 'me', held: 2, waiting: 3 }, others: [{ instance: 'x', held: 6, waiting: 50 }] }), 2, 'below its share: only the room, none yet, until the other gives back');
  t.equal(ceilingUp({ budget: 8, leases: 7, mine: 2, self: { instance: 'me', held: 2, waiting: 3 }, others: [{ instance: 'x', held: 5, waiting: 50 }] }), 3, 'a slot given back: its for the one below its share');
  t.equal(ceilingUp({ budget: 4, leases: 6, mine: 3, self: { instance: 'me', held: 3, waiting: 0 }, others: [] }), 3, 'a budget lowered below what is held: no growth');
  t.equal(ceilingUp({ budget: 8, leases: 8, mine: 2, self: { instance: 'me', held: 4, waiting: 0 }, others: [] }), 2, 'two held without a lease (lost, or opened while Redis was down): down to the leases it holds');
});

t.test('the fallback: static shares, grown to only after the TTL; hold keeps what is held', async (t) => {
  t.equal(staticShare(8, 4), 2);
  t.equal(staticShare(8, 3), 2);
  t.equal(staticShare(2, 4), 1, 'at least 1');
  t.equal(ceilingDown('static', 5, 2, 100, 200), 2, 'above its share: down to it at once');
  t.equal(ceilingDown('static', 0, 2, 100, 200), 0, 'below its share: no growth before the others have shrunk');
  t.equal(ceilingDown('static', 0, 2, 200, 200), 2, 'grown to its share once they have');
  t.equal(ceilingDown('hold', 5, 2, 1000, 200), 5, 'hold keeps what it held');
  t.equal(ceilingDown('hold', 0, 2, 1000, 200), 0, 'and opens nothing new');
});
