// Surge detection (budget/surge.ts), pure: samples in, episodes out, time
// passed in. The connect-rate ring against a list of every attempt, and the
// episodes against their rules: demand above budget for forMs, or a connect
// rate factor times its baseline and above the floor; one start, then one
// end after forMs of calm.
import fc from 'fast-check';
import t from 'tap';
import { BASELINE_WINDOW_S, ConnectRate, MIN_BASELINE_S, RATE_WINDOW_S, SurgeDetector, type SurgeEvent, type SurgeSample } from '../../src/budget/surge.js';

const SETTINGS = { forMs: 10_000, factor: 5, minRatePerSecond: 1 };
/** A start time that is not a whole second, so bucket edges are exercised. */
const T0 = 1_700_000_000_300;

const sample = (demand: number, attempts = 0, budget = 2): SurgeSample => ({
  demand,
  budget,
  waiting: Math.max(0, demand - budget),
  oldestWaitMs: demand > budget ? 1234 : 0,
  attempts,
});

/** Samples once a second from `from` for `seconds`; attempts grow by `perSecond` each. Returns the events and the last time and count. */
function run(d: SurgeDetector, from: number, seconds: number, demand: number, attempts: number, perSecond: number, settings = SETTINGS) {
  const events: { at: number; event: SurgeEvent }[] = [];
  let now = from;
  for (let i = 0; i < seconds; i++) {
    now = from + i * 1000;
    attempts += perSecond;
    const event = d.evaluate(now, sample(demand, attempts), settings);
    if (event) events.push({ at: now, event });
  }
  return { events, now, attempts };
}

t.test('connect rate: the last minute per second, and the 15 minutes before it once a minute of them is known', async (t) => {
  const r = new ConnectRate();
  t.equal(r.perSecond(), 0, 'nothing recorded yet');
  t.equal(r.baseline(), null);
  r.record(T0, 500);
  t.equal(r.perSecond(), 0, 'the first record notes where the counter stands: 500 earlier attempts are not a burst');
  let total = 500;
  for (let s = 1; s <= 60; s++) r.record(T0 + s * 1000, (total += 2));
  t.equal(r.perSecond(), 2, '2 per second for the last minute');
  t.equal(r.baseline(), null, 'no history before the last minute yet');
  for (let s = 61; s <= 60 + MIN_BASELINE_S; s++) r.record(T0 + s * 1000, (total += 2));
  t.equal(r.baseline(), 2, 'a minute of history before the last minute: a baseline');
  // A burst: 600 attempts within one second.
  r.record(T0 + 121_500, (total += 600));
  t.ok(Math.abs(r.perSecond() - (59 * 2 + 600) / 60) < 1e-9, `the burst is in the last minute (${r.perSecond()})`);
  t.equal(r.baseline(), 2, 'and not yet in the baseline');
});

t.test('connect rate: a long silence clears the ring; a clock that goes back and a counter that drops do no harm', async (t) => {
  const r = new ConnectRate();
  r.record(T0, 0);
  for (let s = 1; s <= 300; s++) r.record(T0 + s * 1000, s * 10);
  t.equal(r.perSecond(), 10);
  r.record(T0 + 300_000 + 3_600_000, 3000);
  t.equal(r.perSecond(), 0, 'an hour later: nothing in the last minute');
  t.equal(r.baseline(), 0, 'nor in the 15 minutes before');
  r.record(T0 + 300_000 + 3_600_000 - 5000, 3010);
  t.equal(r.perSecond(), 10 / 60, 'attempts seen after the clock went back land in the newest second');
  r.record(T0 + 300_000 + 3_601_000, 5);
  t.equal(r.perSecond(), 10 / 60, 'a counter that went down adds nothing');
  r.record(T0 + 300_000 + 3_602_000, 65);
  t.equal(r.perSecond(), 70 / 60, 'and counts on from its new value');
});

t.test('connect rate matches every attempt counted by hand, at any spacing of the records', async (t) => {
  fc.assert(
    fc.property(fc.array(fc.record({ gapMs: fc.integer({ min: 0, max: 5000 }), added: fc.nat(50) }), { maxLength: 1500 }), (steps) => {
      const r = new ConnectRate();
      r.record(T0, 0);
      const firstSecond = Math.floor(T0 / 1000) + 1;
      const log: { second: number; added: number }[] = [];
      let now = T0;
      let total = 0;
      for (const { gapMs, added } of steps) {
        now += gapMs;
        total += added;
        r.record(now, total);
        log.push({ second: Math.floor(now / 1000), added });
      }
      const newest = Math.floor(now / 1000);
      const within = (from: number, to: number) => log.filter((e) => e.second >= from && e.second <= to).reduce((n, e) => n + e.added, 0);
      const span = Math.min(RATE_WINDOW_S, newest - firstSecond + 1);
      const expectRate = span > 0 ? within(newest - span + 1, newest) / span : 0;
      if (Math.abs(r.perSecond() - expectRate) > 1e-9) return false;
      const to = newest - RATE_WINDOW_S;
      const from = Math.max(to - BASELINE_WINDOW_S + 1, firstSecond);
      const expectBaseline = to - from + 1 < MIN_BASELINE_S ? null : within(from, to) / (to - from + 1);
      const baseline = r.baseline();
      return expectBaseline === null ? baseline === null : baseline !== null && Math.abs(baseline - expectBaseline) < 1e-9;
    }),
    { numRuns: 300 },
  );
});

t.test('demand above the budget for forMs starts one episode; forMs of calm ends it', async (t) => {
  const d = new SurgeDetector();
  t.same(run(d, T0, 5, 2, 0, 0).events, [], 'demand at the budget is no surge');
  const storm = run(d, T0 + 5000, 30, 20, 0, 0);
  t.equal(storm.events.length, 1, 'one start, however long it lasts');
  const start = storm.events[0];
  t.equal(start.at, T0 + 15_000, 'after 10 s above the budget');
  t.same(start.event, {
    kind: 'start',
    causes: ['demand'],
    demand: 20,
    budget: 2,
    waiting: 18,
    oldestWaitMs: 1234,
    demandAboveMs: 10_000,
    ratePerSecond: 0,
    baselinePerSecond: null,
  });
  t.ok(d.surging);
  t.equal(d.since, T0 + 15_000);
  const calm = run(d, storm.now + 1000, 15, 1, 0, 0);
  t.equal(calm.events.length, 1, 'one end');
  t.equal(calm.events[0].at, storm.now + 11_000, 'after 10 s of calm');
  t.same(calm.events[0].event, { kind: 'end', durationMs: storm.now + 11_000 - (T0 + 15_000), peakDemand: 20, peakRatePerSecond: 0, budget: 2 });
  t.notOk(d.surging);
  t.equal(d.since, null);
});

t.test('a dip to the budget restarts the count; calm shorter than forMs does not end an episode', async (t) => {
  const d = new SurgeDetector();
  let now = T0;
  const at = (demand: number) => {
    now += 1000;
    return d.evaluate(now, sample(demand), SETTINGS);
  };
  for (let i = 0; i < 9; i++) t.equal(at(5), null);
  t.equal(at(2), null, 'at the budget again, before forMs');
  for (let i = 0; i < 10; i++) t.equal(at(5), null, 'the count starts over');
  t.equal(at(5)?.kind, 'start', '10 s after the dip');
  for (let i = 0; i < 9; i++) t.equal(at(1), null, '9 s of calm');
  t.equal(at(3), null, 'above the budget again: the episode goes on');
  for (let i = 0; i < 10; i++) t.equal(at(2), null);
  t.equal(at(2)?.kind, 'end', 'the end, 10 s into an unbroken calm');
});

t.test('forMs 0: a surge at the first sample above the budget, over at the first calm one', async (t) => {
  const d = new SurgeDetector();
  const now0 = { ...SETTINGS, forMs: 0 };
  t.equal(d.evaluate(T0, sample(3), now0)?.kind, 'start');
  t.equal(d.evaluate(T0 + 1000, sample(2), now0)?.kind, 'end');
});

t.test('a connect rate factor times its baseline, above the floor, is a surge', async (t) => {
  const d = new SurgeDetector();
  // 15 minutes at 1 per second (demand never above the budget), then 10 per second.
  const quiet = run(d, T0, 16 * 60, 1, 0, 1);
  t.same(quiet.events, [], 'a steady rate is no surge');
  const storm = run(d, quiet.now + 1000, 120, 1, quiet.attempts, 10);
  t.equal(storm.events.length, 1, 'one start');
  const start = storm.events[0].event;
  if (start.kind !== 'start') return t.fail('a start');
  t.same(start.causes, ['connect_rate']);
  t.equal(start.baselinePerSecond, 1);
  t.ok(start.ratePerSecond >= 5 && start.ratePerSecond < 6, `rate ${start.ratePerSecond}/s, 5 times the baseline`);
  t.equal(storm.events[0].at, quiet.now + 1000 + 26_000, 'once the last minute averages 5 per second');
  // Back to 1 per second: the last minute falls under 5 times the baseline, then 10 s of calm.
  const after = run(d, storm.now + 1000, 120, 1, storm.attempts, 1);
  t.equal(after.events.length, 1);
  const end = after.events[0].event;
  if (end.kind !== 'end') return t.fail('an end');
  t.ok(end.peakRatePerSecond >= 10 - 1e-9, `peak ${end.peakRatePerSecond}/s`);
});

t.test('no rate surge under the floor, without a minute of history, or below the factor', async (t) => {
  const fromZero = new SurgeDetector();
  const q = run(fromZero, T0, 16 * 60, 1, 0, 0);
  t.same(run(fromZero, q.now + 1000, 120, 1, 0, 1).events, [], '1 per second against 0 is not above the floor of 1');
  const restart = new SurgeDetector();
  t.same(run(restart, T0, 100, 1, 0, 50).events, [], 'right after a start (every client reconnecting) there is no baseline');
  const steady = new SurgeDetector();
  const s = run(steady, T0, 16 * 60, 1, 0, 2);
  t.same(run(steady, s.now + 1000, 300, 1, s.attempts, 8).events, [], '4 times the baseline is under a factor of 5');
  const lowFloor = new SurgeDetector();
  const l = run(lowFloor, T0, 16 * 60, 1, 0, 0);
  const spike = run(lowFloor, l.now + 1000, 10, 1, 0, 1, { ...SETTINGS, minRatePerSecond: 0.1 });
  t.equal(spike.events[0]?.event.kind, 'start', 'with a floor of 0.1 per second, 1 per second after silence is one');
});

t.test('both causes are named when both hold', async (t) => {
  const d = new SurgeDetector();
  const q = run(d, T0, 16 * 60, 1, 0, 1);
  const storm = run(d, q.now + 1000, 1, 30, q.attempts, 1000, { ...SETTINGS, forMs: 0 });
  const start = storm.events[0].event;
  t.same(start.kind === 'start' && start.causes, ['demand', 'connect_rate']);
});

t.test('under any samples: starts and ends alternate, one event at most per sample, surging in between', async (t) => {
  const step = fc.record({ gapMs: fc.integer({ min: 0, max: 3000 }), demand: fc.nat(6), added: fc.nat(30), forMs: fc.constantFrom(0, 1000, 5000) });
  fc.assert(
    fc.property(fc.array(step, { maxLength: 400 }), (steps) => {
      const d = new SurgeDetector();
      let now = T0;
      let attempts = 0;
      let surging = false;
      let aboveSince = -1;
      let calmSince = -1;
      for (const { gapMs, demand, added, forMs } of steps) {
        now += gapMs;
        attempts += added;
        const event = d.evaluate(now, sample(demand, attempts, 3), { forMs, factor: 5, minRatePerSecond: 1 });
        const over = demand > 3;
        aboveSince = over ? (aboveSince < 0 ? now : aboveSince) : -1;
        if (event?.kind === 'start') {
          if (surging) return false;
          // A start needs a cause.
          if (event.causes.includes('demand') !== (over && now - aboveSince >= forMs)) return false;
          if (event.causes.length === 0) return false;
          surging = true;
          calmSince = -1;
        } else if (event?.kind === 'end') {
          if (!surging || over) return false;
          if (calmSince < 0 ? forMs > 0 : now - calmSince < forMs) return false;
          surging = false;
        } else if (surging) {
          const rateHigh = d.rate.baseline() !== null && d.rate.perSecond() > 1 && d.rate.perSecond() >= 5 * d.rate.baseline()!;
          calmSince = over || rateHigh ? -1 : calmSince < 0 ? now : calmSince;
        } else if (over && now - aboveSince >= forMs) return false; // demand held for forMs without a start
        if (d.surging !== surging) return false;
      }
      return true;
    }),
    { numRuns: 300 },
  );
});
