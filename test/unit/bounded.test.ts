// Memory that client input cannot grow: every structure keyed by what
// clients send is bounded, and no memo keeps a large message alive.
import t from 'tap';
import v8 from 'node:v8';
import vm from 'node:vm';
import { Scheduler, type Action } from '../../src/budget/scheduler.js';
import { readParse, readQuery } from '../../src/protocol/messages.js';
import { parseStartupPacket } from '../../src/protocol/startup.js';
import { sliceOf } from '../../src/io/views.js';
import { poolKey } from '../../src/server/poolKey.js';
import { WelcomeCache } from '../../src/server/welcomes.js';
import { msg, startupPacket } from '../helpers/wire.js';

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

const SETS = 100_000;

/** Heap in use after a full collection. */
function heapUsed(): number {
  gc();
  gc();
  return process.memoryUsage().heapUsed;
}

/** The startup parameters of the i-th distinct client: each has a search_path and an option of its own. */
function params(i: number): Record<string, string> {
  return { user: 'app', database: 'db', application_name: `worker-${i}`, search_path: `tenant_${i}`, options: `-c pgb.n=${i}` };
}

t.test(`${SETS} distinct startup-parameter sets: the welcome cache stays within its bound`, async (t) => {
  const cache = new WelcomeCache(1000);
  const hot = poolKey('app', 'db', { search_path: 'public' });
  cache.remember(hot, [['server_version', '15']]);
  const before = heapUsed();
  let hotMissed = 0;
  for (let i = 0; i < SETS; i++) {
    const parsed = parseStartupPacket(startupPacket(params(i)));
    if (parsed.kind !== 'startup') throw new Error('not a startup packet');
    const key = poolKey(parsed.params.user, parsed.params.database, parsed.params);
    if (cache.get(key) === undefined) cache.remember(key, [['server_version', '15'], ['search_path', parsed.params.search_path]]);
    // A key in steady use is never the one that goes.
    if (i % 100 === 0 && !cache.get(hot)) hotMissed++;
  }
  t.equal(hotMissed, 0, 'a key in steady use (every 100 logins) is never the one that goes');
  const grown = heapUsed() - before;
  t.equal(cache.size, 1000, 'at most the limit');
  t.ok(cache.get(hot), 'the key in steady use is still there');
  t.ok(cache.get(poolKey('app', 'db', { search_path: `tenant_${SETS - 1}`, options: `-c pgb.n=${SETS - 1}` })), 'the newest keys are there');
  t.notOk(cache.get(poolKey('app', 'db', { search_path: 'tenant_0', options: '-c pgb.n=0' })), 'the oldest went');
  t.ok(grown < 4 * 1024 * 1024, `heap grew ${(grown / 1024).toFixed(0)} KiB for ${SETS} sets (bound: 1000 entries)`);
});

t.test(`${SETS} distinct keys through the scheduler leave nothing behind`, async (t) => {
  const s = new Scheduler({ cap: 20, idleTimeoutMs: 60_000, lifetimeMs: 3_600_000 });
  s.setService('app', { budget: 20, maxWaiting: 100_000, timeoutMs: 60_000 });
  const before = heapUsed();
  let now = 0;
  const close = (actions: Action[]) => {
    for (const a of actions) if (a.kind === 'close') s.closed(a.connId, now);
  };
  for (let i = 0; i < SETS; i++) {
    now++;
    const key = poolKey('app', 'db', { search_path: `tenant_${i}` });
    const { actions } = s.acquire('app', key, now);
    for (const a of actions) {
      if (a.kind === 'open') {
        for (const b of s.opened(a.connId, now)) if (b.kind === 'assign') close(s.release(b.connId, now, false));
      }
      if (a.kind === 'close') s.closed(a.connId, now);
    }
  }
  t.same(s.counts('app'), { service: 'app', budget: 20, held: 0, active: 0, idle: 0, opening: 0, closing: 0, waiting: 0 }, 'every slot is back');
  const grown = heapUsed() - before;
  t.ok(grown < 2 * 1024 * 1024, `heap grew ${(grown / 1024).toFixed(0)} KiB over ${SETS} distinct keys`);
});

t.test('no memo keeps a large message alive', async (t) => {
  const big = () => Buffer.concat([msg('Q', 'select ' + 'x'.repeat(4 * 1024 * 1024) + '\0')]);
  const bigParse = () => Buffer.concat([msg('P', '\0select ' + 'y'.repeat(4 * 1024 * 1024) + '\0\0\0')]);
  const refs: WeakRef<Buffer>[] = [];
  // Nothing read after the large messages: a memo would still hold them.
  (() => {
    const q = big();
    const p = bigParse();
    refs.push(new WeakRef(q), new WeakRef(p));
    // What the session does with a message: views of it, its SQL read twice.
    sliceOf(q, 0, 5);
    sliceOf(q, 5, q.length);
    t.equal(readQuery(q), readQuery(q));
    t.equal(readParse(p).query, readParse(p).query);
  })();
  heapUsed();
  await new Promise((r) => setImmediate(r));
  heapUsed();
  t.same(
    refs.map((r) => r.deref() === undefined),
    [true, true],
    'both 4 MiB messages were collected',
  );
});
