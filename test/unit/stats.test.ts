import t from 'tap';
import { QUEUE_WAIT_BUCKETS, Stats } from '../../src/budget/stats.js';

t.test('queue waits land in the first bucket whose bound they do not exceed', async (t) => {
  const stats = new Stats();
  for (const ms of [0, 1, 1.5, 5, 70_000]) stats.waited('a', ms);
  const w = stats.service('a').wait;
  t.equal(w.buckets.length, QUEUE_WAIT_BUCKETS.length + 1, 'one more bucket for +Inf');
  t.equal(w.buckets[0], 2, '0 and 1 ms are ≤ 0.001 s');
  t.equal(w.buckets[1], 2, '1.5 and 5 ms are ≤ 0.005 s');
  t.equal(w.buckets[QUEUE_WAIT_BUCKETS.length], 1, '70 s is over every bound');
  t.equal(w.count, 5);
  t.equal(Math.round(w.sumSeconds * 1e6) / 1e6, 70.0075);
  t.equal(stats.service('b').wait.count, 0, 'per service');
});
