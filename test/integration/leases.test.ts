// The lease scripts (src/coordination/leases.ts) against a real Redis
// server: every rule of the semaphore one by one, then random interleavings
// of several instances' calls checked against the budget and the cap.
import t from 'tap';
import fc from 'fast-check';
import { Redis } from 'ioredis';
import { LeaseStore } from '../../src/coordination/leases.js';
import { sleep } from '../helpers/proxy.js';
import { startRedis } from '../helpers/redis.js';

const redis = await startRedis(t);
const connections: Redis[] = [];
t.teardown(() => connections.forEach((c) => c.disconnect()));

let clusters = 0;
/** Stores of `n` instances in a cluster of their own. */
function cluster(n: number): LeaseStore[] {
  const name = `c${++clusters}`;
  return Array.from({ length: n }, (_, i) => {
    const c = new Redis({ host: '127.0.0.1', port: redis.port });
    connections.push(c);
    return new LeaseStore(c, `pgbudget:{${name}}:`, `inst${i}`);
  });
}

const TTL = 60_000;
const svc = (name: string, budget: number, leases: string[], waiting = 0) => ({ name, budget, held: leases.length, waiting, oldestWaitMs: 0, leases });

t.test('acquire: within the budget and the cap, both at once; a lease held is held again', async (t) => {
  const [a, b] = cluster(2);
  await a.sync(3, '{}', [svc('s', 2, [])], TTL);
  await b.sync(3, '{}', [svc('s', 2, []), svc('o', 5, [])], TTL);
  t.ok((await a.acquire('inst0#1', 's', 2, 3, TTL)).granted, 'first lease');
  t.ok((await b.acquire('inst1#1', 's', 2, 3, TTL)).granted, 'second lease, another instance');
  const full = await a.acquire('inst0#2', 's', 2, 3, TTL);
  t.same([full.granted, full.serviceLeases, full.budget], [false, 2, 2], 'the budget is full across instances');
  t.ok((await a.acquire('inst0#1', 's', 2, 3, TTL)).granted, 'a lease already held is granted again, not counted twice');
  t.ok((await b.acquire('inst1#2', 'o', 5, 3, TTL)).granted, 'another service, under the cap');
  const cap = await b.acquire('inst1#3', 'o', 5, 3, TTL);
  t.same([cap.granted, cap.allLeases, cap.cap], [false, 3, 3], 'the cap is full across services');
  await a.release('inst0#1', 's');
  t.ok((await b.acquire('inst1#3', 'o', 5, 3, TTL)).granted, 'a release makes room in both sets');
  t.ok((await b.acquire('inst1#4', 'o', -1, 9, TTL)).granted === false, 'the smallest cap of the live instances applies (3), not the one asked with');
});

t.test('the smallest budget of the live instances is in force', async (t) => {
  const [a, b] = cluster(2);
  await a.sync(10, '{}', [svc('s', 4, [])], TTL);
  const r = await b.sync(10, '{}', [svc('s', 2, [])], TTL);
  t.equal(r.services[0].budget, 2, 'the sync says the budget in force');
  t.ok((await a.acquire('inst0#1', 's', 4, 10, TTL)).granted);
  t.ok((await a.acquire('inst0#2', 's', 4, 10, TTL)).granted);
  t.notOk((await a.acquire('inst0#3', 's', 4, 10, TTL)).granted, "a's own budget is 4, b's 2: 2 apply");
  t.ok((await a.acquire('inst0#3', 's', -1, 10, TTL)).granted, 'not enforced here (a dry run): only the cap');
});

t.test('expiry: a lease not renewed within the TTL is the cluster again; an instance no longer live stops counting', async (t) => {
  const [a, b] = cluster(2);
  await a.sync(10, '{}', [svc('s', 1, [])], 300);
  t.ok((await a.acquire('inst0#1', 's', 1, 10, 300)).granted);
  t.notOk((await b.acquire('inst1#1', 's', 1, 10, 300)).granted, 'taken');
  await sleep(350);
  t.ok((await b.acquire('inst1#1', 's', 1, 10, 300)).granted, 'expired: the room is free');
  const r = await b.sync(10, '{}', [svc('s', 1, ['inst1#1'])], TTL);
  t.same(r.services[0].demand.map((d) => d.instance), ['inst1'], "the dead instance's demand is gone");
});

t.test('sync: renews, takes an expired lease again where there is room, reports it lost where not, drops what it no longer names', async (t) => {
  const [a, b] = cluster(2);
  await a.sync(10, '{}', [svc('s', 2, [])], 300);
  await a.acquire('inst0#1', 's', 2, 10, 300);
  await a.acquire('inst0#2', 's', 2, 10, 300);
  await sleep(350);
  // Both expired; b takes one of the two slots.
  t.ok((await b.acquire('inst1#1', 's', 2, 10, TTL)).granted);
  const r = await a.sync(10, '{}', [svc('s', 2, ['inst0#1', 'inst0#2'])], TTL);
  t.same(r.lost, ['inst0#2'], 'one taken again, one lost: the room went to another instance');
  t.equal(r.services[0].leases, 2);
  // A lease of a's that a no longer names (a call that ran late) goes.
  await a.acquire('inst0#9', 's', 2, 10, TTL).catch(() => undefined);
  const c = redis.client();
  await c.zadd(`pgbudget:{c${clusters}}:lease:s`, String(Date.now() + TTL), 'inst0#7');
  await c.zadd(`pgbudget:{c${clusters}}:cap`, String(Date.now() + TTL), 'inst0#7');
  const again = await a.sync(10, '{}', [svc('s', 2, ['inst0#1'])], TTL);
  t.equal(again.services[0].leases, 2, "a stale lease of a's was dropped: a's one and b's one");
  t.same((await c.zrange(`pgbudget:{c${clusters}}:lease:s`, '0', '-1')).sort(), ['inst0#1', 'inst1#1']);
  t.same((await c.zrange(`pgbudget:{c${clusters}}:cap`, '0', '-1')).sort(), ['inst0#1', 'inst1#1']);
  c.disconnect();
});

t.test('leave: every lease of the instance goes at once', async (t) => {
  const [a, b] = cluster(2);
  await a.sync(10, '{}', [svc('s', 3, [])], TTL);
  await a.acquire('inst0#1', 's', 3, 10, TTL);
  await a.acquire('inst0#2', 's', 3, 10, TTL);
  await b.acquire('inst1#1', 's', 3, 10, TTL);
  await a.leave(['s']);
  const r = await b.sync(10, '{}', [svc('s', 3, ['inst1#1'])], TTL);
  t.same([r.services[0].leases, r.allLeases], [1, 1], "only b's lease is left");
  t.same(r.services[0].demand.map((d) => d.instance), ['inst1']);
});

t.test("pids: each instance's server backend pids reach the others (not itself), and go when it leaves", async (t) => {
  const [a, b] = cluster(2);
  await a.sync(3, '{}', [svc('s', 2, [])], TTL, [101, 102]);
  const seen = await b.sync(3, '{}', [svc('s', 2, [])], TTL, [201]);
  t.same(seen.peerPids, [101, 102], "b sees a's");
  t.same((await a.sync(3, '{}', [svc('s', 2, [])], TTL, [101])).peerPids, [201], "a sees b's, not its own");
  t.same((await b.sync(3, '{}', [svc('s', 2, [])], TTL, [])).peerPids, [101], "a's as it last published them");
  await a.leave(['s']);
  t.same((await b.sync(3, '{}', [svc('s', 2, [])], TTL, [])).peerPids, [], 'gone once a has left');
});

t.test("nudge: published on the cluster's channel with the instance's name, and counted", async (t) => {
  const [a] = cluster(1);
  const sub = new Redis({ host: '127.0.0.1', port: redis.port });
  connections.push(sub);
  await sub.subscribe(a.nudgeChannel);
  const got = new Promise<[string, string]>((resolve) => sub.once('message', (channel: string, from: string) => resolve([channel, from])));
  await a.nudge();
  t.same(await got, [a.nudgeChannel, 'inst0']);
  t.match(a.nudgeChannel, /^pgbudget:\{c\d+\}:nudge$/, 'in the cluster\'s hash slot');
  t.equal(a.calls.nudge, 1);
});

t.test('random interleavings of 3 instances: never more leases than the budget or the cap', async (t) => {
  type Op = { kind: 'acquire' | 'release' | 'sync'; who: number; service: number; conn: number };
  const op = fc.record({ kind: fc.constantFrom('acquire', 'acquire', 'release', 'sync'), who: fc.nat(2), service: fc.nat(1), conn: fc.nat(5) }) as fc.Arbitrary<Op>;
  await fc.assert(
    fc.asyncProperty(fc.array(op, { minLength: 5, maxLength: 40 }), async (ops) => {
      const stores = cluster(3);
      const budgets = [3, 2];
      const cap = 4;
      const held = stores.map(() => new Map<string, string>()); // lease -> service
      await Promise.all(stores.map((s) => s.sync(cap, '{}', [svc('s0', budgets[0], []), svc('s1', budgets[1], [])], TTL)));
      // Calls of one step go out together, as instances' calls do.
      for (let i = 0; i < ops.length; i += 3) {
        await Promise.all(
          ops.slice(i, i + 3).map(async (o) => {
            const store = stores[o.who];
            const service = `s${o.service}`;
            const lease = `inst${o.who}#${o.service}-${o.conn}`;
            if (o.kind === 'acquire') {
              // As the coordinator does: named before it is asked for, so a sync sent meanwhile keeps it.
              if (held[o.who].has(lease)) return;
              held[o.who].set(lease, service);
              if (!(await store.acquire(lease, service, budgets[o.service], cap, TTL)).granted) held[o.who].delete(lease);
            } else if (o.kind === 'release') {
              const [first] = [...held[o.who]];
              if (first) {
                held[o.who].delete(first[0]);
                await store.release(first[0], first[1]);
              }
            } else {
              const names = (s: string) => [...held[o.who]].filter(([, x]) => x === s).map(([l]) => l);
              const r = await store.sync(cap, '{}', [svc('s0', budgets[0], names('s0')), svc('s1', budgets[1], names('s1'))], TTL);
              for (const l of r.lost) held[o.who].delete(l);
            }
          }),
        );
        const all = held.flatMap((m) => [...m.values()]);
        if (all.filter((s) => s === 's0').length > budgets[0] || all.filter((s) => s === 's1').length > budgets[1] || all.length > cap) return false;
      }
      return true;
    }),
    { numRuns: 200 },
  );
});
