import t from 'tap';
import { CONNECT_BUCKETS, connectErrorClass, countClientError, QUEUE_WAIT_BUCKETS, Stats } from '../../src/budget/stats.js';

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

t.test('upstream connects: a histogram from 1 ms to 10 s, and failures by SQLSTATE class or network', async (t) => {
  const stats = new Stats();
  for (const ms of [0.4, 3, 30_000]) stats.upstreamConnected(ms);
  const h = stats.upstream.connect;
  t.equal(h.buckets.length, CONNECT_BUCKETS.length + 1);
  t.equal(CONNECT_BUCKETS[0], 0.001);
  t.equal(h.buckets[0], 1, '0.4 ms ≤ 1 ms');
  t.equal(h.buckets[2], 1, '3 ms ≤ 5 ms');
  t.equal(h.buckets[CONNECT_BUCKETS.length], 1, '30 s is over every bound');
  t.equal(h.count, 3);
  for (const code of ['53300', '57P03', '28P01', null, null, 'not a code', '08006']) stats.upstreamConnectFailed(code);
  t.same(stats.upstream.connectErrors, { '53': 1, '57': 1, '28': 1, network: 2, other: 1, '08': 1 });
  t.equal(connectErrorClass('3D000'), '3D');
});

t.test("client errors are counted per service by pgbudget's own SQLSTATE; attempts and surges start at 0", async (t) => {
  const stats = new Stats();
  const a = stats.service('a');
  t.same([a.connectionAttempts, a.surges, a.clientErrors], [0, 0, {}]);
  countClientError(a, '53300');
  countClientError(a, '53300');
  countClientError(a, '57014');
  t.same(stats.service('a').clientErrors, { '53300': 2, '57014': 1 });
  t.same(stats.service('b').clientErrors, {}, 'per service');
});
