// The network fuzzer (test/bench/fuzz.ts, `npm run fuzz`) for 60 seconds (30 in the portable pass):
// hostile traffic against the real CLI while pgbench and checking
// node-postgres clients work through other services. The long runs are
// `npm run fuzz -- --cases 1000000`.
import t from 'tap';
import { runFuzz, summary } from '../bench/fuzz.js';

const seconds = Number(process.env.PGBUDGET_FUZZ_SECONDS ?? 60);

t.test(`${seconds} s of hostile traffic: the proxy stays up, real clients see no error and no wrong row, nothing leaks`, async (t) => {
  const report = await runFuzz({ seconds });
  t.comment(summary(report));
  t.ok(report.cases > 1000, `${report.cases} hostile cases ran`);
  t.ok(report.proxyAlive, 'the proxy is alive');
  t.same(report.internalErrors, [], 'nothing logged at level error (no internal error)');
  t.equal(report.leaks, '', 'every budget is back to 0 in use');
  t.ok(report.rssFlat, `RSS flat: ${report.rssKiB.warm} KiB warmed up, ${report.rssKiB.end} KiB at the end`);
  t.ok(report.pgbench.transactions > 0, `pgbench ran ${report.pgbench.transactions} transactions`);
  t.equal(report.pgbench.failed, 0, 'pgbench: 0 failed');
  t.same(report.pgbench.exitCodes, [0, 0], 'pgbench exited 0');
  t.ok(report.checker.transactions > 0, `node-postgres checkers ran ${report.checker.transactions} transactions`);
  t.equal(report.checker.errors, 0, `checkers: 0 errors${report.checker.firstProblem ? ` (${report.checker.firstProblem})` : ''}`);
  t.equal(report.checker.wrong, 0, 'checkers: 0 wrong results');
  t.ok(report.passed);
});
