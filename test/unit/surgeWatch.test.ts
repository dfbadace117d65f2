// The surge tick (proxy/surgeWatch.ts) over a real scheduler and counters,
// no sockets: one warning and one count per episode, one end line; the
// settings of the config in force at each tick (a reload applies at the
// next one); a service's own settings over the global ones.
import t from 'tap';
import { pino } from 'pino';
import { Scheduler } from '../../src/budget/scheduler.js';
import { Stats } from '../../src/budget/stats.js';
import { validateConfig } from '../../src/config/schema.js';
import { SurgeWatch } from '../../src/proxy/surgeWatch.js';

const K = 'app\0db';

function setup() {
  const lines: { level: number; msg: string; service?: string }[] = [];
  const log = pino({ level: 'info' }, { write: (l: string) => void lines.push(JSON.parse(l)) });
  const scheduler = new Scheduler({ cap: 10, idleTimeoutMs: 600_000, lifetimeMs: 3_600_000 });
  const stats = new Stats();
  for (const name of ['a', 'b']) scheduler.setService(name, { budget: 1, maxWaiting: 100, timeoutMs: 600_000 });
  return { lines, scheduler, stats, watch: new SurgeWatch(log, scheduler, stats) };
}

const config = (raw: Record<string, unknown> = {}) =>
  validateConfig({
    services: [
      { name: 'a', budget: 1 },
      { name: 'b', budget: 1, surge: { forMs: 60_000 } },
    ],
    ...raw,
  });

t.test('one warning and one count per episode, then one end line; a reload applies at the next tick', async (t) => {
  const { lines, scheduler, stats, watch } = setup();
  // Three clients of each service want a server connection: demand 3 against a budget of 1.
  for (const service of ['a', 'b']) for (let i = 0; i < 3; i++) scheduler.acquire(service, K, 0);
  let now = 0;
  const tick = (c = config()) => watch.tick((now += 1000), c);
  for (let i = 0; i < 5; i++) tick();
  t.same(lines, [], 'forMs 10 s: no surge yet');
  const reloaded = config({ surge: { forMs: 2000 } });
  tick(reloaded);
  t.same(
    lines.map((l) => [l.level, l.service]),
    [[40, 'a']],
    'a reload to forMs 2 s: a surges at the next tick; b keeps its own forMs of 60 s',
  );
  t.match(lines[0].msg, /^surge: service "a" demand above budget: demand 3 against budget 1, 3 waiting \(oldest 6000 ms\)/);
  for (let i = 0; i < 5; i++) tick(reloaded);
  t.equal(lines.length, 1, 'one warning per episode');
  t.equal(stats.service('a').surges, 1);
  t.equal(stats.service('b').surges, 0);
  t.match(watch.state('a', now), { surging: true, forSeconds: 5 });
  t.match(watch.state('b', now), { surging: false, forSeconds: 0 });
  // The waiters leave: demand 0 (the open connection counts against the budget, not as demand).
  for (const service of ['a', 'b']) for (const w of scheduler.failWaiters(service, K)) void w;
  for (let i = 0; i < 10; i++) tick(reloaded);
  t.same(
    lines.slice(1).map((l) => [l.level, l.service, l.msg]),
    [[30, 'a', 'surge ended: service "a" after 8 s, peak demand 3 against budget 1, peak 0 connects/s']],
    'one end line, after 2 s of calm',
  );
  t.notOk(watch.state('a', now).surging);
});

t.test('a service the scheduler forgets is forgotten here too', async (t) => {
  const { scheduler, watch } = setup();
  watch.tick(0, config());
  t.ok(scheduler.retire('b', 0, []));
  watch.tick(1000, config({ services: [{ name: 'a', budget: 1 }] }));
  t.same(watch.state('b', 1000), { surging: false, forSeconds: 0, ratePerSecond: 0, baselinePerSecond: null });
});
