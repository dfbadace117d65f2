// Instructions per transaction on the proxy's main thread, counted by
// callgrind: the measure of speed that machine noise does not move (tps on a
// shared machine moves by 10-20% between runs; this by 1-3%).
//
// Starts a throwaway PostgreSQL (pgbench scale 1), then pgbudget (transaction
// mode, the limits of run.ts) and, after it, the bare forwarder of floor.ts,
// each under `valgrind --tool=callgrind --separate-threads=yes`. For each:
// pgbench once in each mode to warm up (connections, JIT), then per mode
// `callgrind_control -z`, `pgbench -n -S -M <mode> -c 10 -j 2 -t N`,
// `callgrind_control -d`, and the main thread's total divided by the
// transactions. The count includes pgbench's 10 logins and logouts per run,
// under 1% of it at the default N.
//
//   npm run bench:instructions
//   BENCH_TRANSACTIONS=2000 npm run bench:instructions   # per client; default 1000
//   BENCH_TARGETS=pgbudget npm run bench:instructions    # default pgbudget,floor
//   BENCH_KEEP=1 npm run bench:instructions              # keep the dumps, for callgrind_annotate
import { execFileSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startCluster, type Cluster } from '../helpers/cluster.js';
import { run, sleep } from '../helpers/proxy.js';
import { ensureDebianPackage, startFloor, startPgbudget, type StartOptions, type Started, type Target } from './targets.js';

const TRANSACTIONS = Number(process.env.BENCH_TRANSACTIONS ?? 1000);
const WARMUP = Math.max(1, Math.round(TRANSACTIONS / 2));
const TARGETS = (process.env.BENCH_TARGETS ?? 'pgbudget,floor').split(',');
const KEEP = process.env.BENCH_KEEP === '1';
const MODES = ['simple', 'extended'] as const;
const CLIENTS = 10;

const starters: Record<string, (cluster: Cluster, dir: string, opts: StartOptions) => Promise<Started>> = {
  pgbudget: startPgbudget,
  floor: (cluster, _dir, opts) => startFloor(cluster, opts),
};

/**
 * Runs pgbench -S against the target; returns the transactions it completed.
 * -n: no VACUUM first, which would go through the proxy and be counted.
 */
async function pgbench(target: Target, mode: string, transactions: number): Promise<number> {
  const args = ['-n', '-S', '-M', mode, '-c', String(CLIENTS), '-j', '2', '-t', String(transactions)];
  const r = await run('pgbench', [...args, '-h', '127.0.0.1', '-p', String(target.port), '-U', 'postgres', 'postgres'], { timeoutMs: 600_000 });
  const done = Number(/number of transactions actually processed: (\d+)/.exec(r.stdout)?.[1] ?? 0);
  const failed = Number(/number of failed transactions: (\d+)/.exec(r.stdout)?.[1] ?? 0);
  if (r.code !== 0 || failed > 0 || done !== CLIENTS * transactions) {
    throw new Error(`pgbench ${args.join(' ')} against ${target.name}: exit ${r.code}, ${done} done, ${failed} failed\n${r.stderr.slice(-500)}`);
  }
  return done;
}

/** Where vgdb's FIFOs go, through which callgrind_control talks to valgrind: in the temp dir, so a killed valgrind leaves none in /tmp. */
const vgdbPrefix = (outDir: string) => path.join(outDir, 'vgdb-pipe');

function callgrindControl(option: '-z' | '-d', pid: number, outDir: string): void {
  execFileSync('callgrind_control', [`--vgdb-prefix=${vgdbPrefix(outDir)}`, option, String(pid)], { stdio: 'ignore', timeout: 120_000 });
}

interface ThreadDump {
  thread: number;
  instructions: number;
  /** whether the thread entered JavaScript (V8's JSEntry builtin ran on it) */
  ranJs: boolean;
}

function readDump(file: string): ThreadDump {
  const text = readFileSync(file, 'utf8');
  const thread = Number(/^thread: (\d+)$/m.exec(text)?.[1]);
  const instructions = Number(/^totals: (\d+)$/m.exec(text)?.[1]);
  if (!Number.isInteger(thread) || !Number.isInteger(instructions)) throw new Error(`unreadable callgrind dump ${file}`);
  return { thread, instructions, ranJs: /^c?fn=\(\d+\) Builtins_JSEntry$/m.test(text) };
}

/**
 * Dumps the counts since the last zeroing and returns the main thread's
 * total. With --separate-threads=yes a dump writes one file per thread,
 * `<out>.<dump number>-<thread number>`, each with its `thread:` and
 * `totals:` lines. The main thread is the one that runs Node's event loop and
 * every line of JavaScript; the others (V8's platform workers, which compile
 * and mark concurrently, libuv's pool, the delayed-task thread) are left out,
 * since what they do moves with the machine's timing more than with the
 * proxy's code: with a short warm-up a compiler thread can even be the
 * busiest, so "the busiest thread" is no test. Two tests that do not depend
 * on timing must agree instead: valgrind numbers threads as they start, so
 * the process's initial thread is 1; and it is the only thread on which V8's
 * JSEntry ran, the way from C++ into JavaScript (pgbudget has no
 * worker_threads).
 */
async function dumpMainThread(pid: number, outDir: string, dump: number): Promise<number> {
  callgrindControl('-d', pid, outDir);
  const prefix = `callgrind.out.${pid}.${dump}-`;
  const ours = () => readdirSync(outDir).filter((f) => f.startsWith(prefix));
  const complete = (f: string) => /^totals: /m.test(readFileSync(path.join(outDir, f), 'utf8'));
  // The files may follow callgrind_control's return by a moment: wait until they are all written.
  for (let waited = 0; ; waited += 200) {
    const files = ours();
    if (files.length > 0 && files.every(complete)) {
      await sleep(200);
      if (ours().length === files.length) break;
    }
    if (waited > 60_000) throw new Error(`no complete callgrind dump ${prefix}* in ${outDir}`);
    await sleep(200);
  }
  const threads = ours().map((f) => readDump(path.join(outDir, f)));
  const js = threads.filter((t) => t.ranJs);
  if (js.length !== 1 || js[0].thread !== 1) {
    throw new Error(`callgrind dump ${prefix}*: JavaScript ran on thread(s) ${js.map((t) => t.thread).join(', ') || 'none'}, expected on thread 1 alone`);
  }
  return js[0].instructions;
}

// Whatever is still running or on disk when this process ends (an error, ^C) goes with it.
const live = new Set<ChildProcess>();
let tempDir: string | undefined;
process.on('exit', () => {
  for (const p of live) p.kill('SIGKILL');
  if (tempDir && !KEEP) rmSync(tempDir, { recursive: true, force: true });
});
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, () => process.exit(1));

async function stop(proc: ChildProcess): Promise<void> {
  live.delete(proc);
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  proc.kill('SIGTERM');
  const timer = setTimeout(() => proc.kill('SIGKILL'), 30_000);
  await exited;
  clearTimeout(timer);
}

async function measure(name: string, cluster: Cluster, dir: string): Promise<Record<string, number>> {
  const outDir = path.join(dir, name);
  mkdirSync(outDir);
  const wrapper = [
    'valgrind',
    '--tool=callgrind',
    '--separate-threads=yes',
    `--callgrind-out-file=${path.join(outDir, 'callgrind.out.%p')}`,
    `--log-file=${path.join(outDir, 'valgrind.log')}`,
    `--vgdb-prefix=${vgdbPrefix(outDir)}`,
  ];
  const { target, proc } = await starters[name](cluster, dir, { wrapper, timeoutMs: 180_000, onSpawn: (p) => live.add(p) });
  const perTx: Record<string, number> = {};
  try {
    for (const mode of MODES) await pgbench(target, mode, WARMUP);
    let dump = 0;
    for (const mode of MODES) {
      callgrindControl('-z', target.pid!, outDir);
      const done = await pgbench(target, mode, TRANSACTIONS);
      perTx[mode] = (await dumpMainThread(target.pid!, outDir, ++dump)) / done;
      process.stdout.write(`  ${name.padEnd(9)} -S -M ${mode.padEnd(8)} -c ${CLIENTS}: ${(perTx[mode] / 1000).toFixed(2)}k instructions per transaction (${done} transactions)\n`);
    }
  } catch (err) {
    const log = path.join(outDir, 'valgrind.log');
    if (existsSync(log)) process.stderr.write(`${name} valgrind log:\n${readFileSync(log, 'utf8').slice(-2000)}\n`);
    throw err;
  } finally {
    await stop(proc);
  }
  return perTx;
}

async function main(): Promise<void> {
  ensureDebianPackage('valgrind', 'valgrind');
  const started = Date.now();
  const dir = (tempDir = mkdtempSync(path.join(os.tmpdir(), 'pgbudget-instructions-')));
  process.stdout.write(`callgrind, main thread: pgbench -S -c ${CLIENTS} -t ${TRANSACTIONS} (${CLIENTS * TRANSACTIONS} transactions) per mode, after ${WARMUP} to warm up\n`);
  const cluster = await startCluster({ maxConnections: 60 });
  try {
    const init = await run('pgbench', ['-i', '-s', '1', '-q', '-h', '127.0.0.1', '-p', String(cluster.port), '-U', 'postgres', 'postgres'], { timeoutMs: 300_000 });
    if (init.code !== 0) throw new Error(`pgbench -i: ${init.stderr}`);
    const rows: string[] = [];
    for (const name of TARGETS) {
      if (!starters[name]) throw new Error(`unknown target ${name} (pgbudget, floor)`);
      const perTx = await measure(name, cluster, dir);
      rows.push(`| ${name} | ${MODES.map((m) => `${(perTx[m] / 1000).toFixed(2)}k`).join(' | ')} |`);
    }
    process.stdout.write(
      `\n| instructions per transaction (main thread) | ${MODES.map((m) => `-S -M ${m} -c ${CLIENTS}`).join(' | ')} |\n|---|---|---|\n${rows.join('\n')}\n` +
        `(${((Date.now() - started) / 1000).toFixed(0)} s)\n`,
    );
  } finally {
    await cluster.destroy();
    if (KEEP) process.stdout.write(`callgrind dumps kept in ${dir} (callgrind_annotate <file>)\n`);
    else rmSync(dir, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`bench:instructions failed: ${(err as Error).stack}\n`);
    process.exit(1);
  },
);
