// What the benchmarks start: pgbudget with the benchmark's limits and the
// bare forwarder of floor.ts, either directly or under a wrapper command
// (valgrind), plus the ports and Debian packages they need. Shared by run.ts
// (throughput) and instructions.ts (callgrind counts).
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { Cluster } from '../helpers/cluster.js';
import { repoRoot, sleep } from '../helpers/proxy.js';

export interface Target {
  name: string;
  port: number;
  pid?: number;
}

export interface Started {
  target: Target;
  proc: ChildProcess;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

export async function waitForPort(port: number, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port }, () => {
        s.destroy();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nothing listening on ${port}`);
    await sleep(50);
  }
}

/** A command from Debian's packages, installed when missing (as root). */
export function ensureDebianPackage(command: string, pkg: string): void {
  try {
    execFileSync(command, ['--version'], { stdio: 'ignore' });
    return;
  } catch {
    // not installed
  }
  if (process.getuid?.() !== 0) throw new Error(`${command} is not installed: apt-get install ${pkg}`);
  process.stdout.write(`installing ${pkg} (apt-get)\n`);
  execFileSync('apt-get', ['update', '-qq'], { stdio: 'ignore' });
  execFileSync('apt-get', ['install', '-y', '-qq', pkg], { stdio: 'ignore' });
}

/** Options for starting a target. */
export interface StartOptions {
  /** a command the node process runs under, e.g. ['valgrind', '--tool=callgrind'] */
  wrapper?: string[];
  /** how long it may take to listen (valgrind starts node slowly) */
  timeoutMs?: number;
  /** called once the process exists, before it listens (to clean it up if the wait fails) */
  onSpawn?: (proc: ChildProcess) => void;
}

function spawnNode(args: string[], opts: StartOptions): ChildProcess {
  const [cmd, ...pre] = opts.wrapper?.length ? [...opts.wrapper, process.execPath] : [process.execPath];
  const proc = spawn(cmd, [...pre, ...args], { stdio: ['ignore', 'ignore', 'inherit'] });
  opts.onSpawn?.(proc);
  return proc;
}

/** pgbudget in transaction mode with PgBouncer's limits in run.ts: budget 20, cap 40. */
export async function startPgbudget(cluster: Cluster, dir: string, opts: StartOptions = {}): Promise<Started> {
  const port = await freePort();
  const config = path.join(dir, 'pgbudget.yaml');
  writeFileSync(
    config,
    [
      `listen: "127.0.0.1:${port}"`,
      `admin: "127.0.0.1:${await freePort()}"`,
      'logLevel: warn',
      'auth: { method: trust }',
      'upstream:',
      '  host: 127.0.0.1',
      `  port: ${cluster.port}`,
      '  maxConnections: 40',
      'services:',
      '  - name: bench',
      '    budget: 20',
      '    poolMode: transaction',
      '    queue: { maxWaiting: 20000, timeoutMs: 60000 }',
      'defaultService: bench',
      '',
    ].join('\n'),
  );
  const proc = spawnNode([path.join(repoRoot, 'dist', 'cli.js'), '--config', config], opts);
  await waitForPort(port, opts.timeoutMs);
  return { target: { name: 'pgbudget', port, pid: proc.pid }, proc };
}

/**
 * The bare forwarder of floor.ts: one PostgreSQL connection per client, so
 * it runs only where the clients fit beside the proxies' server connections.
 */
export async function startFloor(cluster: Cluster, opts: StartOptions = {}): Promise<Started> {
  const port = await freePort();
  const proc = spawnNode([path.join(repoRoot, 'build', 'test', 'bench', 'floor.js'), String(port), String(cluster.port)], opts);
  await waitForPort(port, opts.timeoutMs);
  return { target: { name: 'floor', port, pid: proc.pid }, proc };
}
