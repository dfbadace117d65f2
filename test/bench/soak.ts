// Soak: mixed load against the real CLI (a child process) in front of a
// throwaway PostgreSQL, with random client kills, random server kills and
// database restarts, for a duration.
//
//   npm run soak                       # 600 s (or PGBUDGET_SOAK_SECONDS)
//   npm run soak -- --duration 120
//
// Load: node-postgres clients that check every answer (test/helpers/load.ts)
// through a transaction-mode and a session-mode service: simple, extended
// (unnamed and named) queries, transactions, 0.3-1.5 s queries, and queries
// cancelled with a CancelRequest.
// Faults, all the while:
// - client kills: a raw client logs in and is destroyed (FIN or RST) in the
//   middle of a query, of an open transaction (that set a transaction-local
//   setting), of an extended batch with no Sync yet, or after setting a
//   session setting; the checkers would see the transaction or the setting
//   if the proxy handed out that server connection unreset;
// - server kills: pg_terminate_backend of a random pgbudget:% backend over
//   a direct connection, every 0.7-2.3 s;
// - database restarts: cluster.restart, immediate and fast in turn, every
//   restartEverySeconds (default: 150 s in runs of 5 minutes or more, else
//   half the run; none in the last 15 s).
// Every 10 s one line: elapsed, proxy RSS, transactions, servers opened and
// closed, server connections held, clients waiting, checked units ok / lost
// / wrong, errors the checkers saw by SQLSTATE, faults so far.
//
// After the load stops and a settle period the run passes when: the proxy is
// alive and logged no internal error; no checker got a wrong answer or hung;
// checkers saw no error but those the faults explain; every budget is 0 in
// use with nothing waiting or opening; servers opened − closed equals the
// server connections held (and pg_stat_activity shows that many); and RSS
// is flat: the mean RSS of the last window is within 10% above that of the
// second window. The window is a minute (so the second minute against the
// last minute) in runs of 4 minutes or more, else a quarter of the run (a
// 60 s run compares 45-60 s against 15-30 s); the first window is warm-up.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { startCluster } from '../helpers/cluster.js';
import { checkedLoad, newTally, ops, rnd, type Tally, type WorkerSpec } from '../helpers/load.js';
import { frontend, rawClient, scrape, simpleQuery, sleep, spawnProxy } from '../helpers/proxy.js';

export interface SoakOptions {
  seconds: number;
  /** default: 150 s when seconds >= 300, else seconds / 2 */
  restartEverySeconds?: number;
  /** progress lines (default: to stderr) */
  log?: (line: string) => void;
}

export interface SoakSample {
  elapsedS: number;
  rssKiB: number;
  transactions: number;
  serversOpened: number;
  serversClosed: number;
  serverConnections: number;
  waiting: number;
}

export interface SoakResult {
  seconds: number;
  /** one every 10 s */
  samples: SoakSample[];
  rss: { windowS: number; secondWindowKiB: number; lastWindowKiB: number; ratio: number; maxKiB: number; flat: boolean };
  checkers: Tally;
  hung: string[];
  /** checker errors the faults do not explain, by SQLSTATE */
  unexpectedErrors: Record<string, number>;
  faults: { clientKills: number; serverKills: number; restarts: { atS: number; mode: 'fast' | 'immediate'; ms: number }[] };
  end: { leaks: string; serversOpened: number; serversClosed: number; serverConnections: number; balanced: boolean; pgBackends: number };
  proxyAlive: boolean;
  internalErrors: string[];
  passed: boolean;
}

/** Errors that client kills, server kills and restarts explain. */
const EXPLAINED = new Set([
  '57P01', // terminating connection due to administrator command (pg_terminate_backend, fast shutdown)
  '57P02', // crash of another server process
  '57P03', // the database system is shutting down / starting up
  '08006', // pgbudget: server connection lost
  'conn-terminated',
  'conn-broken',
  'conn-ended',
  'ECONNRESET',
  'EPIPE',
]);

const TICK_S = 10;

interface Status {
  upstream: { serverConnections: number };
  services: {
    name: string;
    transactions: number;
    serversOpened: number;
    serversClosed: number;
    serverConnections: { active: number; idle: number; opening: number; closing: number; total: number };
    clients: { waiting: number };
  }[];
}

function rssKiB(pid: number): number {
  try {
    return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
  } catch {
    return 0;
  }
}

function mean(xs: number[]): number {
  return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN;
}

const sum = (st: Status, f: (s: Status['services'][number]) => number) => st.services.reduce((n, s) => n + f(s), 0);

/** A raw client that logs in and is destroyed in the middle of something. */
async function killOneClient(port: number): Promise<void> {
  const c = rawClient(port);
  try {
    await c.login(rnd.pick(['soak_tx', 'soak_sess']));
    switch (rnd.int(4)) {
      case 0: // mid-query
        c.socket.write(simpleQuery('select pg_sleep(2)'));
        await sleep(rnd.int(300));
        break;
      case 1: // an open transaction with a transaction-local setting
        c.socket.write(simpleQuery("begin; select set_config('pgbudget.tag', 'KILLED', true)"));
        await c.until(() => c.count('Z') >= 2, 3000);
        await sleep(rnd.int(50));
        break;
      case 2: // an extended batch with no Sync yet
        c.socket.write(
          Buffer.concat([
            frontend('P', Buffer.from('\0select pg_sleep(1)\0\0\0')),
            frontend('B', Buffer.from([0, 0, 0, 0, 0, 0, 0, 0])),
            frontend('E', Buffer.from([0, 0, 0, 0, 0])),
          ]),
        );
        await sleep(rnd.int(200));
        break;
      default: // a session setting (pins in transaction mode)
        c.socket.write(simpleQuery("select set_config('pgbudget.session', 'KILLED', false)"));
        await c.until(() => c.count('Z') >= 2, 3000);
    }
  } catch {
    // login or the step timed out (a restart, say): it is killed all the same
  }
  if (rnd.chance(0.5)) c.socket.resetAndDestroy();
  else c.socket.destroy();
}

/** When (s into the run) the database restarts: every restartEverySeconds, none in the last 15 s. */
export function restartSchedule(seconds: number, restartEverySeconds?: number): number[] {
  const every = restartEverySeconds ?? (seconds >= 300 ? 150 : seconds / 2);
  const at: number[] = [];
  for (let k = 1; k * every <= seconds - 15; k++) at.push(k * every);
  return at;
}

export async function runSoak(options: SoakOptions): Promise<SoakResult> {
  const seconds = options.seconds;
  const log = options.log ?? ((line: string) => process.stderr.write(line + '\n'));
  const restartAt = restartSchedule(seconds, options.restartEverySeconds);
  const windowS = seconds >= 240 ? 60 : seconds / 4;

  const cluster = await startCluster({ maxConnections: 30 });
  const cleanups: (() => unknown)[] = [];
  try {
    await cluster.query('create role soak_tx login; create role soak_sess login');
    const queue = { maxWaiting: 1000, timeoutMs: 30_000 };
    const p = await spawnProxy({ teardown: (fn) => cleanups.push(fn) }, cluster, {
      upstream: { maxConnections: 14 },
      startupTimeoutMs: 5000,
      services: [
        { name: 'soak_tx', match: { user: 'soak_tx' }, budget: 6, poolMode: 'transaction', queue },
        { name: 'soak_sess', match: { user: 'soak_sess' }, budget: 8, poolMode: 'session', queue },
      ],
    });
    const pid = p.proc.pid!;
    const status = async () => JSON.parse((await scrape(p.adminPort, '/status')).body) as Status;

    const txOps = [ops.extended, ops.extended, ops.named, ops.named, ops.simple, ops.simple, ops.transaction, ops.transaction, ops.long, ops.cancel];
    const sessOps = [ops.extended, ops.named, ops.simple, ops.session, ops.session, ops.transaction, ops.long, ops.cancel];
    const workers: WorkerSpec[] = [
      ...Array.from({ length: 12 }, () => ({ url: p.url('soak_tx'), ops: txOps })),
      ...Array.from({ length: 4 }, () => ({ url: p.url('soak_sess'), ops: sessOps })),
    ];
    const tally = newTally();
    const started = Date.now();
    const elapsed = () => (Date.now() - started) / 1000;
    const load = checkedLoad(workers, { port: p.port, pauseMs: 3, tally });

    let running = true;
    const faults: SoakResult['faults'] = { clientKills: 0, serverKills: 0, restarts: [] };
    const clientKiller = (async () => {
      while (running) {
        await sleep(150 + rnd.int(350));
        if (!running) break;
        await killOneClient(p.port);
        faults.clientKills++;
      }
    })();
    const serverKiller = (async () => {
      while (running) {
        await sleep(700 + rnd.int(1600));
        if (!running) break;
        try {
          const rows = await cluster.query<{ killed: boolean }>(
            "select pg_terminate_backend(pid) as killed from pg_stat_activity where application_name like 'pgbudget:%' order by random() limit 1",
          );
          if (rows[0]?.killed) faults.serverKills++;
        } catch {
          // the database is restarting
        }
      }
    })();
    const restarter = (async () => {
      for (const [i, atS] of restartAt.entries()) {
        while (running && Date.now() < started + atS * 1000) await sleep(100);
        if (!running) break;
        const mode = i % 2 === 0 ? 'immediate' : 'fast';
        const t0 = Date.now();
        log(`soak: ${elapsed().toFixed(1)}s restarting the database (-m ${mode}) at ${new Date(t0).toISOString()}`);
        await cluster.restart(mode);
        faults.restarts.push({ atS: Math.round((t0 - started) / 1000), mode, ms: Date.now() - t0 });
        log(`soak: ${elapsed().toFixed(0)}s restarted the database (-m ${mode}, ${Date.now() - t0} ms)`);
      }
    })();

    const rss: { t: number; kiB: number }[] = [];
    const samples: SoakSample[] = [];
    const line = (s: SoakSample) =>
      `soak: ${String(s.elapsedS).padStart(4)}s rss ${(s.rssKiB / 1024).toFixed(1)} MiB  tx ${s.transactions}  opened ${s.serversOpened}  closed ${s.serversClosed}  held ${s.serverConnections}  waiting ${s.waiting}  ` +
      `units ok ${tally.ok} lost ${tally.lost} wrong ${tally.wrong}  errors ${JSON.stringify(tally.errors)}  kills client ${faults.clientKills} server ${faults.serverKills} restarts ${faults.restarts.length}`;
    const sample = async (): Promise<SoakSample> => {
      const st = await status();
      return {
        elapsedS: Math.round(elapsed()),
        rssKiB: rssKiB(pid),
        transactions: sum(st, (s) => s.transactions),
        serversOpened: sum(st, (s) => s.serversOpened),
        serversClosed: sum(st, (s) => s.serversClosed),
        serverConnections: st.upstream.serverConnections,
        waiting: sum(st, (s) => s.clients.waiting),
      };
    };
    for (let tick = 1; elapsed() < seconds; ) {
      await sleep(Math.min(1000, Math.max(0, (seconds - elapsed()) * 1000)));
      rss.push({ t: elapsed(), kiB: rssKiB(pid) });
      if (elapsed() >= tick * TICK_S || elapsed() >= seconds) {
        tick = Math.floor(elapsed() / TICK_S) + 1;
        const s = await sample();
        samples.push(s);
        log(line(s));
      }
    }

    // Load off, then settle.
    running = false;
    const stopAt = Date.now();
    await Promise.all([clientKiller, serverKiller, restarter]);
    const { hung } = await load.stop({ graceMs: 20_000 });
    log(`soak: load stopped in ${Date.now() - stopAt} ms`);
    const settleAt = Date.now();
    const proxyAlive = p.proc.exitCode === null && p.proc.signalCode === null;
    let leaks = 'proxy not running';
    let end: SoakResult['end'] = { leaks, serversOpened: 0, serversClosed: 0, serverConnections: -1, balanced: false, pgBackends: -1 };
    if (proxyAlive) {
      const deadline = Date.now() + 20_000;
      for (;;) {
        const st = await status();
        leaks = st.services
          .filter((s) => s.serverConnections.active > 0 || s.serverConnections.opening > 0 || s.clients.waiting > 0)
          .map((s) => `${s.name}: ${JSON.stringify(s.serverConnections)} waiting ${s.clients.waiting}`)
          .join('; ');
        const settled = st.services.every((s) => s.serverConnections.closing === 0);
        const pgBackends = (
          await cluster.query<{ n: number }>("select count(*)::int as n from pg_stat_activity where application_name like 'pgbudget:%'")
        )[0].n;
        const opened = sum(st, (s) => s.serversOpened);
        const closed = sum(st, (s) => s.serversClosed);
        const balanced = st.services.every((s) => s.serversOpened - s.serversClosed === s.serverConnections.total);
        end = { leaks, serversOpened: opened, serversClosed: closed, serverConnections: st.upstream.serverConnections, balanced, pgBackends };
        if ((!leaks && settled && balanced && pgBackends === st.upstream.serverConnections) || Date.now() > deadline) break;
        await sleep(200);
      }
      log(`soak: settled in ${Date.now() - settleAt} ms: ${JSON.stringify(end)}`);
    }

    const inWindow = (from: number, to: number) => rss.filter((r) => r.t >= from && r.t < to).map((r) => r.kiB);
    const secondWindowKiB = Math.round(mean(inWindow(windowS, 2 * windowS)));
    const lastWindowKiB = Math.round(mean(inWindow(seconds - windowS, seconds + 1)));
    const ratio = lastWindowKiB / secondWindowKiB;
    const unexpectedErrors = Object.fromEntries(Object.entries(tally.errors).filter(([k]) => !EXPLAINED.has(k)));
    const internalErrors = p.logs.filter((l) => /"level":(50|60)/.test(l)).slice(0, 20);
    const result: SoakResult = {
      seconds: Math.round(elapsed()),
      samples,
      rss: { windowS, secondWindowKiB, lastWindowKiB, ratio, maxKiB: Math.max(...rss.map((r) => r.kiB)), flat: ratio <= 1.1 },
      checkers: tally,
      hung,
      unexpectedErrors,
      faults,
      end,
      proxyAlive,
      internalErrors,
      passed: false,
    };
    result.passed =
      proxyAlive &&
      internalErrors.length === 0 &&
      tally.wrong === 0 &&
      tally.ok > 0 &&
      hung.length === 0 &&
      Object.keys(unexpectedErrors).length === 0 &&
      end.leaks === '' &&
      end.balanced &&
      end.pgBackends === end.serverConnections &&
      result.rss.flat;
    if (proxyAlive) {
      const termAt = Date.now();
      p.proc.kill('SIGTERM');
      await p.exited;
      log(`soak: the proxy exited ${Date.now() - termAt} ms after SIGTERM`);
    }
    return result;
  } finally {
    for (const fn of cleanups.reverse()) await fn();
    await cluster.destroy();
  }
}

export function summary(r: SoakResult): string {
  const c = r.checkers;
  return [
    `soak: ${r.passed ? 'PASSED' : 'FAILED'} after ${r.seconds} s`,
    `checkers: ${c.ok} units ok, ${c.lost} lost, ${c.wrong} wrong${c.firstWrong ? ` (first: ${c.firstWrong})` : ''}; ${c.connects} connects, ${c.connectFailures} failed; ` +
      `cancels ${c.cancelled} taken, ${c.cancelMissed} missed; hung ${r.hung.length ? r.hung.join('; ') : 'none'}`,
    `errors by SQLSTATE: ${JSON.stringify(c.errors)}; unexplained: ${JSON.stringify(r.unexpectedErrors)}`,
    ...Object.entries(c.examples).map(([k, e]) => `  first ${k}: ${e}`),
    `faults: ${r.faults.clientKills} client kills, ${r.faults.serverKills} server kills, restarts ${r.faults.restarts.map((x) => `${x.mode}@${x.atS}s (${x.ms} ms)`).join(', ') || 'none'}`,
    `end: ${r.end.leaks ? `LEAKED ${r.end.leaks}` : 'every budget 0 in use, nothing waiting or opening'}; opened ${r.end.serversOpened} − closed ${r.end.serversClosed} ` +
      `${r.end.balanced ? '=' : '≠'} held ${r.end.serverConnections}; pg_stat_activity ${r.end.pgBackends}`,
    `RSS: ${(r.rss.secondWindowKiB / 1024).toFixed(1)} MiB in ${r.rss.windowS}-${2 * r.rss.windowS} s, ${(r.rss.lastWindowKiB / 1024).toFixed(1)} MiB in the last ${r.rss.windowS} s ` +
      `(×${r.rss.ratio.toFixed(3)}, ${r.rss.flat ? 'flat' : 'GREW'}), ${(r.rss.maxKiB / 1024).toFixed(1)} MiB at most`,
    `proxy alive: ${r.proxyAlive}; internal errors logged: ${r.internalErrors.length}${r.internalErrors.map((l) => `\n  ${l}`).join('')}`,
  ].join('\n');
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({ options: { duration: { type: 'string' }, json: { type: 'boolean' } } });
  const seconds = Number(values.duration ?? process.env.PGBUDGET_SOAK_SECONDS ?? 600);
  const result = await runSoak({ seconds });
  process.stdout.write((values.json ? JSON.stringify(result, null, 2) : summary(result)) + '\n');
  process.exit(result.passed ? 0 : 1);
}
