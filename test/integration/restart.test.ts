// The database restarts under load (pg_ctl restart -m fast, then -m
// immediate) while 20 transaction-mode and 4 session-mode clients run
// checked queries through pgbudget. The restart may cost the units of work
// in flight (the clients reconnect and count them as lost), but never a
// wrong answer; work resumes within seconds of the database being back, and
// afterwards no slot is leaked and the proxy's opened − closed server
// connections equal what it holds (and what pg_stat_activity shows).
import t from 'tap';
import { withCluster } from '../helpers/cluster.js';
import { checkedLoad, ops, type WorkerSpec } from '../helpers/load.js';
import { assertNoLeaks, sleep, startProxy } from '../helpers/proxy.js';

const TX_CLIENTS = 20;
const SESSION_CLIENTS = 4;
/**
 * Work must resume this soon after pg_ctl says the database accepts
 * connections again. The restart itself takes 0.4-1 s; the proxy's backoff
 * (100 ms doubling to 5 s) reaches 800 ms at most over an outage that
 * short if it doubles once per failed attempt in turn, so a correct proxy
 * resumes well within 1 s. (Doubling once per failed connection, of which
 * a dozen fail at once, jumps to the 5 s cap within milliseconds.)
 */
const RESUME_LIMIT_MS = 2000;

const cluster = await withCluster(t, { maxConnections: 20 });
await cluster.query('create role tx login; create role sess login');

for (const mode of ['fast', 'immediate'] as const) {
  t.test(`pg_ctl restart -m ${mode} under load: only in-flight work lost, no wrong answer, resumes, nothing leaked`, async (t) => {
    const proxy = await startProxy(t, cluster, {
      upstream: { maxConnections: 14 },
      services: [
        { name: 'tx', match: { user: 'tx' }, budget: 8, poolMode: 'transaction', queue: { timeoutMs: 20_000 } },
        { name: 'sess', match: { user: 'sess' }, budget: SESSION_CLIENTS, poolMode: 'session', queue: { timeoutMs: 20_000 } },
      ],
    });
    const workers: WorkerSpec[] = [
      ...Array.from({ length: TX_CLIENTS }, () => ({ url: proxy.url('tx'), ops: [ops.extended, ops.named, ops.simple, ops.transaction] })),
      ...Array.from({ length: SESSION_CLIENTS }, () => ({ url: proxy.url('sess'), ops: [ops.extended, ops.simple, ops.session, ops.transaction] })),
    ];
    let back = Infinity; // when the restart returned
    const firstOkAfterBack: number[] = workers.map(() => 0);
    const load = checkedLoad(workers, {
      port: proxy.port,
      pauseMs: 2,
      onOk: (id, at) => {
        if (at >= back) firstOkAfterBack[id] ||= at;
      },
    });
    await sleep(1500);
    const okBefore = load.tally.ok;
    t.ok(okBefore > 100, `warm: ${okBefore} units answered before the restart`);

    const lostBefore = load.tally.lost;
    const restartAt = Date.now();
    await cluster.restart(mode);
    back = Date.now();
    const restartMs = back - restartAt;
    // Run on until every worker has had a good answer after the restart (or the limit passed), then a second more.
    while (firstOkAfterBack.some((x) => x === 0) && Date.now() - back < RESUME_LIMIT_MS + 5000) await sleep(20);
    await sleep(1000);
    const { tally, hung } = await load.stop();

    const resumeFirst = Math.min(...firstOkAfterBack.filter((x) => x > 0)) - back;
    const resumeAll = firstOkAfterBack.every((x) => x > 0) ? Math.max(...firstOkAfterBack) - back : Infinity;
    t.comment(
      `restart -m ${mode}: pg_ctl restart took ${restartMs} ms; units ok ${tally.ok}, lost ${tally.lost}, wrong ${tally.wrong}; ` +
        `resumed: first good answer ${resumeFirst} ms, every one of ${workers.length} clients ${resumeAll} ms after the database was back; ` +
        `reconnects ${tally.connects - workers.length}, connect failures ${tally.connectFailures}; errors by SQLSTATE ${JSON.stringify(tally.errors)}`,
    );
    t.same(hung, [], 'no client hung');
    t.equal(tally.wrong, 0, `no wrong answer${tally.firstWrong ? ` (${tally.firstWrong})` : ''}`);
    t.equal(lostBefore, 0, 'nothing lost before the restart');
    // In flight at the restart: at most one unit per client, and a client
    // whose server connection was idle in the pool may lose the unit it sends
    // before the proxy has seen that connection close.
    t.ok(tally.lost <= workers.length, `only the work in flight was lost: ${tally.lost} units for ${workers.length} clients`);
    t.equal(tally.connectFailures, 0, `no reconnect was refused${tally.firstError ? ` (first error: ${tally.firstError})` : ''}`);
    t.ok(resumeAll <= RESUME_LIMIT_MS, `every client had a good answer ${resumeAll} ms after the database was back (limit ${RESUME_LIMIT_MS} ms)`);

    await assertNoLeaks(t, proxy, 5000);
    // Opened − closed equals what the proxy holds once nothing is opening or closing, and Postgres sees exactly that many.
    let snap = proxy.proxy.snapshot();
    let seen = -1;
    const deadline = Date.now() + 5000;
    for (;;) {
      snap = proxy.proxy.snapshot();
      seen = (await cluster.query<{ n: number }>(`select count(*)::int as n from pg_stat_activity where application_name like 'pgbudget:%'`))[0].n;
      const settled = snap.services.every((s) => s.serverConnections.opening === 0 && s.serverConnections.closing === 0);
      if ((settled && seen === snap.upstream.serverConnections) || Date.now() > deadline) break;
      await sleep(50);
    }
    for (const s of snap.services) {
      t.equal(
        s.serversOpened - s.serversClosed,
        s.serverConnections.total,
        `${s.name}: opened ${s.serversOpened} − closed ${s.serversClosed} = ${s.serverConnections.total} held (${JSON.stringify(s.serverConnections)})`,
      );
    }
    t.equal(seen, snap.upstream.serverConnections, `pg_stat_activity shows the ${snap.upstream.serverConnections} server connections the proxy holds`);
  });
}
