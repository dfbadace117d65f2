// The soak (test/bench/soak.ts, `npm run soak` for 10 minutes) for 60
// seconds: mixed checked load through a transaction-mode and a session-mode
// service of the real CLI, with random client kills, random server kills
// and one database restart (-m immediate, at 30 s). PGBUDGET_SOAK_SECONDS
// changes the length.
import t from 'tap';
import { restartSchedule, runSoak, summary } from '../bench/soak.js';

const seconds = Number(process.env.PGBUDGET_SOAK_SECONDS ?? 60);

t.test(`${seconds} s soak with client kills, server kills and restarts: no wrong answer, no leak, RSS flat`, { timeout: (seconds + 90) * 1000 }, async (t) => {
  const r = await runSoak({ seconds, log: (line) => t.comment(line) });
  t.comment(summary(r));
  t.ok(r.proxyAlive, 'the proxy is alive');
  t.same(r.internalErrors, [], 'nothing logged at level error (no internal error)');
  t.ok(r.checkers.ok > 1000, `checkers: ${r.checkers.ok} units answered correctly`);
  t.equal(r.checkers.wrong, 0, `0 wrong answers${r.checkers.firstWrong ? ` (${r.checkers.firstWrong})` : ''}`);
  t.same(r.hung, [], 'no checker hung');
  t.same(r.unexpectedErrors, {}, `checkers saw only the errors the faults explain (${JSON.stringify(r.checkers.errors)})`);
  t.ok(r.faults.clientKills > 20, `${r.faults.clientKills} clients killed mid-query or mid-transaction`);
  t.ok(r.faults.serverKills > 10, `${r.faults.serverKills} server connections terminated`);
  t.equal(r.faults.restarts.length, restartSchedule(seconds).length, `the database restarted ${r.faults.restarts.length} times`);
  t.equal(r.end.leaks, '', 'every budget is back to 0 in use, nothing waiting or opening');
  t.ok(r.end.balanced, `servers opened ${r.end.serversOpened} − closed ${r.end.serversClosed} = held ${r.end.serverConnections}`);
  t.equal(r.end.pgBackends, r.end.serverConnections, 'pg_stat_activity shows the server connections the proxy holds');
  t.ok(r.rss.flat, `RSS flat: ${r.rss.lastWindowKiB} KiB in the last ${r.rss.windowS} s vs ${r.rss.secondWindowKiB} KiB in the second window (×${r.rss.ratio.toFixed(3)}, limit 1.10)`);
  t.ok(r.passed, 'the soak passed');
});
