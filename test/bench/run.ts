// Side-by-side benchmark: pgbudget against PgBouncer (and PostgreSQL
// directly), with the same limits, in one run, alternating the proxies round
// by round so both see the same machine noise. Prints ratios, not just times.
// At 10 clients a third target, the bare forwarder of floor.ts, shows what
// Node.js itself costs: floor/PgBouncer is the best a Node.js proxy can do
// on this machine, pgbudget/floor what pgbudget's own work costs.
//
//   npm run bench                       # BENCH_SECONDS=5 BENCH_ROUNDS=2 by default
//   BENCH_SECONDS=10 BENCH_ROUNDS=3 npm run bench
//   BENCH_CASES=simple-10,idle npm run bench   # a subset
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chownSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { startCluster, type Cluster } from '../helpers/cluster.js';
import { run, sleep } from '../helpers/proxy.js';
import { ensureDebianPackage, freePort, startFloor, startPgbudget, waitForPort, type Started, type Target } from './targets.js';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 2);
const IDLE_CLIENTS = Number(process.env.BENCH_IDLE_CLIENTS ?? 10_000);
const ONLY = process.env.BENCH_CASES?.split(',');

interface Case {
  id: string;
  label: string;
  args: string[];
}

const CASES: Case[] = [
  ...['simple', 'extended'].flatMap((mode) =>
    [10, 50, 1000].map((c) => ({
      id: `${mode}-${c}`,
      label: `-S -M ${mode} -c ${c}`,
      args: ['-S', '-M', mode, '-c', String(c), '-j', '2'],
    })),
  ),
  { id: 'connect-10', label: '-S -C -c 10 (new connection per transaction)', args: ['-S', '-C', '-c', '10', '-j', '2'] },
].filter((c) => !ONLY || ONLY.includes(c.id));

const CLOCK_TICKS = Number(execFileSync('getconf', ['CLK_TCK']).toString()) || 100;

/** CPU seconds a process (all its threads) has used: user and system, from /proc/<pid>/stat. */
function cpuSeconds(pid: number): { user: number; system: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after "pid (comm) ": state is field 3, utime 14, stime 15.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { user: Number(fields[11]) / CLOCK_TICKS, system: Number(fields[12]) / CLOCK_TICKS };
}

function rssKiB(pid: number): number {
  return Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]);
}

async function startPgbouncer(cluster: Cluster, dir: string): Promise<Started> {
  const port = await freePort();
  writeFileSync(path.join(dir, 'userlist.txt'), '"postgres" ""\n');
  writeFileSync(
    path.join(dir, 'pgbouncer.ini'),
    [
      '[databases]',
      `postgres = host=127.0.0.1 port=${cluster.port} dbname=postgres`,
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      `listen_port = ${port}`,
      'unix_socket_dir =',
      'auth_type = trust',
      `auth_file = ${path.join(dir, 'userlist.txt')}`,
      'pool_mode = transaction',
      'default_pool_size = 20',
      'max_db_connections = 40',
      'max_client_conn = 20000',
      'ignore_startup_parameters = extra_float_digits',
      'log_connections = 0',
      'log_disconnections = 0',
      '',
    ].join('\n'),
  );
  const asRoot = process.getuid?.() === 0;
  if (asRoot) {
    const uid = Number(execFileSync('id', ['-u', 'postgres']).toString());
    const gid = Number(execFileSync('id', ['-g', 'postgres']).toString());
    for (const f of ['', 'userlist.txt', 'pgbouncer.ini']) chownSync(path.join(dir, f), uid, gid);
  }
  // setpriv keeps the raised open-files limit that runuser's PAM session would reset.
  const cmd = asRoot ? 'setpriv' : 'pgbouncer';
  const args = asRoot
    ? ['--reuid=postgres', '--regid=postgres', '--init-groups', 'pgbouncer', path.join(dir, 'pgbouncer.ini')]
    : [path.join(dir, 'pgbouncer.ini')];
  const proc = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  await waitForPort(port);
  return { target: { name: 'pgbouncer', port, pid: proc.pid }, proc };
}

interface Result {
  tps: number;
  latencyMs: number;
  failed: number;
  /** The proxy's own CPU per transaction, user and system, in µs (NaN for direct runs). */
  cpuUserUs: number;
  cpuSystemUs: number;
}

async function pgbench(target: Target, c: Case, seconds = SECONDS): Promise<Result> {
  const cpuBefore = target.pid ? cpuSeconds(target.pid) : null;
  const r = await run('pgbench', [...c.args, '-T', String(seconds), '-h', '127.0.0.1', '-p', String(target.port), '-U', 'postgres', 'postgres'], {
    timeoutMs: (SECONDS + 120) * 1000,
  });
  const tps = Number(/tps = ([\d.]+)/.exec(r.stdout)?.[1] ?? 0);
  const latencyMs = Number(/latency average = ([\d.]+) ms/.exec(r.stdout)?.[1] ?? NaN);
  const failedMatch = /number of failed transactions: (\d+)/.exec(r.stdout);
  const failed = failedMatch ? Number(failedMatch[1]) : -1;
  if (r.code !== 0) process.stderr.write(`${target.name} ${c.label}: exit ${r.code}: ${r.stderr.slice(-300)}\n`);
  const transactions = Number(/number of transactions actually processed: (\d+)/.exec(r.stdout)?.[1] ?? 0);
  let cpuUserUs = NaN;
  let cpuSystemUs = NaN;
  if (cpuBefore && transactions > 0) {
    const after = cpuSeconds(target.pid!);
    cpuUserUs = ((after.user - cpuBefore.user) * 1e6) / transactions;
    cpuSystemUs = ((after.system - cpuBefore.system) * 1e6) / transactions;
  }
  return { tps, latencyMs, failed, cpuUserUs, cpuSystemUs };
}

/**
 * RSS once the process has gone idle: the lowest over 10 s. V8 collects
 * garbage (the benchmark's transactions before, the logins after) only when
 * it sees the process idle (its memory reducer, a few seconds in), and until
 * then RSS counts it: in one trace 2.2 KiB per client at 1 s after the
 * logins, 1.3 KiB from 6 s on. Both ends of the difference are taken so.
 */
async function settledRssKiB(pid: number): Promise<number> {
  let low = Infinity;
  for (let k = 0; k < 10; k++) {
    await sleep(1000);
    low = Math.min(low, rssKiB(pid));
  }
  return low;
}

/** Opens n logged-in idle clients; returns RSS growth per client in KiB. */
async function idleRss(target: Target, n: number): Promise<number> {
  const startup = (() => {
    const body = Buffer.from('\0\x03\0\0user\0postgres\0database\0postgres\0\0', 'latin1');
    const len = Buffer.alloc(4);
    len.writeInt32BE(body.length + 4);
    return Buffer.concat([len, body]);
  })();
  // Warm up: the first logins open server connections and fill caches.
  const sockets: net.Socket[] = [];
  const open = () =>
    new Promise<void>((resolve, reject) => {
      const s = net.connect({ host: '127.0.0.1', port: target.port }, () => s.write(startup));
      let seen = Buffer.alloc(0);
      s.on('data', (d) => {
        seen = Buffer.concat([seen, d]);
        if (seen.includes(Buffer.from('Z\0\0\0\x05I', 'latin1'))) resolve();
      });
      s.on('error', reject);
      sockets.push(s);
    });
  for (let i = 0; i < 20; i++) await open();
  const before = await settledRssKiB(target.pid!);
  for (let i = 0; i < n; i += 500) await Promise.all(Array.from({ length: Math.min(500, n - i) }, open));
  const after = await settledRssKiB(target.pid!);
  for (const s of sockets) s.destroy();
  await sleep(500);
  return (after - before) / n;
}

function stats(xs: number[]): { min: number; median: number; max: number } {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length / 2;
  const median = s.length % 2 ? s[Math.floor(mid)] : (s[mid - 1] + s[mid]) / 2;
  return { min: s[0], median, max: s[s.length - 1] };
}

async function main(): Promise<void> {
  ensureDebianPackage('pgbouncer', 'pgbouncer');
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pgbudget-bench-'));
  process.stdout.write(`pgbudget benchmark: ${SECONDS}s per run, ${ROUNDS} rounds (A B A B), ${os.cpus().length} cores\n`);
  const cluster = await startCluster({ maxConnections: 60, extraConf: { shared_buffers: '128MB' } });
  const procs: ChildProcess[] = [];
  try {
    const init = await run('pgbench', ['-i', '-s', '10', '-q', '-h', '127.0.0.1', '-p', String(cluster.port), '-U', 'postgres', 'postgres'], { timeoutMs: 300_000 });
    if (init.code !== 0) throw new Error(`pgbench -i: ${init.stderr}`);
    const bouncer = await startPgbouncer(cluster, dir);
    const budget = await startPgbudget(cluster, dir);
    const floor = await startFloor(cluster);
    procs.push(bouncer.proc, budget.proc, floor.proc);
    const direct: Target = { name: 'direct', port: cluster.port };
    const rows: string[] = [];
    for (const c of CASES) {
      const runs: Record<string, Result[]> = { pgbudget: [], pgbouncer: [], floor: [] };
      const clients = Number(c.args[c.args.indexOf('-c') + 1]);
      // The floor opens a server connection per client: only 10 fit beside the proxies' 40.
      const withFloor = clients <= 10 && !c.args.includes('-C');
      const targets = withFloor ? [budget.target, bouncer.target, floor.target] : [budget.target, bouncer.target];
      // Warm-up (server connections, JIT): one short unmeasured run each.
      for (const t of targets) await pgbench(t, { ...c, args: c.args }, 1);
      for (let round = 0; round < ROUNDS; round++) {
        // A B (C), then the reverse, so no target always runs first.
        for (const t of round % 2 === 0 ? targets : [...targets].reverse()) {
          const r = await pgbench(t, c);
          runs[t.name].push(r);
          process.stdout.write(
            `  ${c.label.padEnd(46)} round ${round + 1} ${t.name.padEnd(9)} ${r.tps.toFixed(0).padStart(7)} tps  ${r.latencyMs.toFixed(2).padStart(8)} ms  failed ${r.failed}` +
              `  proxy CPU ${r.cpuUserUs.toFixed(1)} user + ${r.cpuSystemUs.toFixed(1)} sys µs/tx\n`,
          );
        }
      }
      // Directly only where the clients fit beside the proxies' 40 server connections (max_connections 60).
      const direct1000 = clients > 10 ? null : await pgbench(direct, c);
      if (direct1000) {
        process.stdout.write(`  ${c.label.padEnd(46)} direct           ${direct1000.tps.toFixed(0).padStart(7)} tps  ${direct1000.latencyMs.toFixed(2).padStart(8)} ms\n`);
      }
      const ratios = runs.pgbudget.map((r, i) => r.tps / runs.pgbouncer[i].tps);
      const s = stats(ratios);
      const failed = [...runs.pgbudget, ...runs.pgbouncer].map((r) => r.failed);
      const floorRatios = (num: Result[], den: Result[]) =>
        withFloor ? stats(num.map((r, i) => r.tps / den[i].tps)).median.toFixed(2) : 'n/a';
      const cpu = (rs: Result[]) =>
        `${stats(rs.map((r) => r.cpuUserUs)).median.toFixed(1)} + ${stats(rs.map((r) => r.cpuSystemUs)).median.toFixed(1)}`;
      rows.push(
        `| ${c.label} | ${stats(runs.pgbudget.map((r) => r.tps)).median.toFixed(0)} | ${stats(runs.pgbouncer.map((r) => r.tps)).median.toFixed(0)} | ` +
          `${direct1000 ? direct1000.tps.toFixed(0) : 'n/a (over max_connections)'} | ${s.min.toFixed(2)} / ${s.median.toFixed(2)} / ${s.max.toFixed(2)} | ` +
          `${cpu(runs.pgbudget)} | ${cpu(runs.pgbouncer)} | ${floorRatios(runs.floor, runs.pgbouncer)} | ${floorRatios(runs.pgbudget, runs.floor)} | ` +
          `${withFloor ? cpu(runs.floor) : 'n/a'} | ${failed.join(',')} |`,
      );
    }
    if (!ONLY || ONLY.includes('idle')) {
      // Fresh processes: a heap grown by the runs above has room to spare,
      // and new clients would fill it without RSS showing them.
      for (const p of procs) p.kill('SIGKILL');
      await sleep(500);
      const fresh = [await startPgbudget(cluster, dir), await startPgbouncer(cluster, dir)];
      procs.push(...fresh.map((f) => f.proc));
      for (const t of fresh.map((f) => f.target)) {
        const kib = await idleRss(t, IDLE_CLIENTS);
        rows.push(`| RSS per idle logged-in client, ${IDLE_CLIENTS} clients: ${t.name} | ${kib.toFixed(2)} KiB | | | | | | | | | |`);
        process.stdout.write(`  idle clients: ${t.name} ${kib.toFixed(2)} KiB per client\n`);
      }
    }
    process.stdout.write(
      `\n| case | pgbudget tps (median) | PgBouncer tps (median) | direct tps | pgbudget/PgBouncer min / median / max | ` +
        `pgbudget CPU µs/tx user + sys | PgBouncer CPU µs/tx user + sys | floor/PgBouncer (median) | pgbudget/floor (median) | ` +
        `floor CPU µs/tx user + sys | failed (each run) |\n|---|---|---|---|---|---|---|---|---|---|---|\n${rows.join('\n')}\n`,
    );
  } finally {
    for (const p of procs) p.kill('SIGKILL');
    await cluster.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`bench failed: ${(err as Error).stack}\n`);
    process.exit(1);
  },
);
