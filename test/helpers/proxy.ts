// A pgbudget in front of a test cluster: in-process (startProxy) or as the
// real CLI in a child process (spawnProxy), plus the real clients' runners.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { pino } from 'pino';
import { stringify } from 'yaml';
import { startPgbudget, type RunningPgbudget } from '../../src/app.js';
import { validateConfig } from '../../src/config/schema.js';
import type { Cluster } from './cluster.js';

interface Teardown {
  teardown(fn: () => unknown): void;
}

export interface TestProxy extends RunningPgbudget {
  port: number;
  url(user?: string, database?: string, extra?: string): string;
}

/** Root of the repository (helpers live in build/test/helpers once compiled). */
export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

export function proxyConfig(cluster: Cluster, raw: Record<string, unknown>): Record<string, unknown> {
  const upstream = (raw.upstream ?? {}) as Record<string, unknown>;
  return {
    listen: '127.0.0.1:0',
    admin: '127.0.0.1:0',
    logLevel: 'silent',
    // Most tests are about budgets, not passwords: trust, written explicitly as it must be.
    auth: { method: 'trust' },
    // Most tests count a service's server connections in pg_stat_activity by
    // application_name; those about what a client sees use the default
    // (`client`) and say so.
    serverApplicationName: 'service',
    ...raw,
    upstream: { host: '127.0.0.1', port: cluster.port, ...upstream },
  };
}

/** Starts pgbudget in this process, stopped at teardown. */
export async function startProxy(t: Teardown, cluster: Cluster, raw: Record<string, unknown>): Promise<TestProxy> {
  const config = validateConfig(proxyConfig(cluster, raw));
  const log = pino({ level: process.env.PGBUDGET_TEST_LOG ? 'debug' : 'silent' });
  const app = await startPgbudget(config, log);
  t.teardown(() => app.stop());
  const port = app.address.port;
  return {
    ...app,
    port,
    url: (user = 'postgres', database = 'postgres', extra = '') =>
      `postgres://${user}@127.0.0.1:${port}/${database}${extra ? `?${extra}` : ''}`,
  };
}

interface Asserter {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  ok: (...args: any[]) => unknown;
}

type Snapshot = ReturnType<RunningPgbudget['proxy']['snapshot']>;

async function assertNoLeaksIn(t: Asserter, snapshot: () => Promise<Snapshot>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let busy = '';
  for (;;) {
    busy = (await snapshot()).services
      .filter((s) => s.serverConnections.active > 0 || s.clients.waiting > 0 || s.serverConnections.opening > 0)
      .map((s) => `${s.name}: ${JSON.stringify(s.serverConnections)} waiting ${s.clients.waiting}`)
      .join('; ');
    if (!busy || Date.now() > deadline) break;
    await sleep(20);
  }
  t.ok(!busy, busy ? `slots leaked: ${busy}` : 'every budget is back to 0 in use');
}

/** Waits until no service holds a server connection in use, a client waiting, or one opening. */
export function assertNoLeaks(t: Asserter, proxy: RunningPgbudget, timeoutMs = 3000): Promise<void> {
  return assertNoLeaksIn(t, async () => proxy.proxy.snapshot(), timeoutMs);
}

/** The same check for a proxy in a child process, through GET /status. */
export function assertNoLeaksHttp(t: Asserter, adminPort: number, timeoutMs = 3000): Promise<void> {
  return assertNoLeaksIn(t, async () => JSON.parse((await scrape(adminPort, '/status')).body) as Snapshot, timeoutMs);
}

/**
 * Runs `sql` (one row with an int column n) over a direct connection every
 * few milliseconds until stop(), which resolves with the largest n seen.
 */
export function watchMax(directUrl: string, sql: string) {
  let max = 0;
  let running = true;
  const done = (async () => {
    const c = new pg.Client({ connectionString: directUrl });
    await c.connect();
    while (running) {
      max = Math.max(max, (await c.query(sql)).rows[0].n);
      await sleep(2);
    }
    await c.end();
  })();
  return {
    async stop(): Promise<number> {
      running = false;
      await done;
      return max;
    },
  };
}

/** The most server connections a proxy holds, as pg_stat_activity shows them. */
export function watchProxyBackends(directUrl: string, service?: string) {
  const filter = service ? `application_name = 'pgbudget:${service}'` : `application_name like 'pgbudget:%'`;
  return watchMax(directUrl, `select count(*)::int as n from pg_stat_activity where ${filter}`);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `pred` every 50 ms until it holds; throws naming `what` after `timeoutMs`. */
export async function until(what: string, pred: () => Promise<boolean> | boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await pred())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command (psql, pgbench) to completion; never throws on a non-zero exit. */
export function run(cmd: string, args: string[], opts: { env?: Record<string, string>; timeoutMs?: number } = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(
      cmd,
      args,
      { env: { ...process.env, PGCONNECT_TIMEOUT: '30', ...opts.env }, timeout: opts.timeoutMs ?? 60_000, maxBuffer: 64 * 1024 * 1024 },
      (err, stdout, stderr) => {
        const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0;
        resolve({ code, stdout: String(stdout), stderr: String(stderr) });
      },
    );
  });
}

/**
 * psql runs pg_sleep(seconds) and is interrupted with SIGINT (libpq then sends
 * a CancelRequest) once it has connected and sent the query; resolves with
 * its stderr.
 */
export async function psqlCancelledSleep(url: string, seconds = 20): Promise<{ stderr: string; code: number | null; ms: number }> {
  const { spawn } = await import('node:child_process');
  const started = Date.now();
  // \echo runs after the connection is up, right before the query is sent.
  const child = spawn('psql', ['-X', '-d', url, '-c', '\\echo started', '-c', `select pg_sleep(${seconds})`], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  // 'close', not 'exit': only then has all of psql's stderr been read.
  const closed = new Promise<number | null>((r) => child.on('close', (c) => r(c)));
  await new Promise<void>((resolve) => {
    child.stdout.on('data', (d) => {
      if (String(d).includes('started')) resolve();
    });
    child.on('exit', () => resolve());
  });
  await sleep(300);
  child.kill('SIGINT');
  const code = await closed;
  return { stderr, code, ms: Date.now() - started };
}

export function psql(url: string, sql: string, opts: { env?: Record<string, string> } = {}): Promise<RunResult> {
  return run('psql', ['-X', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-d', url, '-c', sql], opts);
}

export interface SpawnedProxy {
  proc: ChildProcess;
  port: number;
  adminPort: number;
  configPath: string;
  logs: string[];
  url(user?: string, database?: string): string;
  writeConfig(raw: Record<string, unknown>): Promise<void>;
  waitForLog(pattern: RegExp, timeoutMs?: number): Promise<string>;
  exited: Promise<number | null>;
}

/** Runs the real CLI (dist/cli.js) with a YAML config file (and `args` after it); killed at teardown. */
export async function spawnProxy(t: Teardown, cluster: Cluster, raw: Record<string, unknown>, args: string[] = []): Promise<SpawnedProxy> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'pgbudget-cli-'));
  const configPath = path.join(dir, 'pgbudget.yaml');
  const writeConfig = (r: Record<string, unknown>) =>
    writeFile(configPath, stringify(proxyConfig(cluster, { logLevel: 'info', ...r })));
  await writeConfig(raw);
  const proc = spawn(process.execPath, [path.join(repoRoot, 'dist', 'cli.js'), '--config', configPath, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: string[] = [];
  const waiters: { pattern: RegExp; from: number; resolve: (line: string) => void }[] = [];
  let buffered = '';
  const onLine = (line: string) => {
    logs.push(line);
    for (const w of [...waiters]) {
      if (w.pattern.test(line)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(line);
      }
    }
  };
  proc.stdout!.on('data', (d: Buffer) => {
    buffered += d.toString();
    const lines = buffered.split('\n');
    buffered = lines.pop()!;
    lines.forEach(onLine);
  });
  proc.stderr!.on('data', (d: Buffer) => d.toString().split('\n').filter(Boolean).forEach(onLine));
  const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
  const waitForLog = (pattern: RegExp, timeoutMs = 15_000) => {
    const hit = logs.find((l) => pattern.test(l));
    if (hit) return Promise.resolve(hit);
    return new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no log line matching ${pattern} within ${timeoutMs} ms:\n${logs.join('\n')}`)), timeoutMs);
      waiters.push({ pattern, from: logs.length, resolve: (l) => (clearTimeout(timer), resolve(l)) });
    });
  };
  t.teardown(async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGKILL');
      await exited;
    }
    await rm(dir, { recursive: true, force: true });
  });
  const ready = JSON.parse(await waitForLog(/pgbudget ready/));
  const port = Number(String(ready.listen).split(':').pop());
  const adminPort = Number(String(ready.admin).split(':').pop());
  return {
    proc,
    port,
    adminPort,
    configPath,
    logs,
    url: (user = 'postgres', database = 'postgres') => `postgres://${user}@127.0.0.1:${port}/${database}`,
    writeConfig,
    waitForLog,
    exited,
  };
}

/** A raw TCP connection for sending hand-made packets. */
export function rawConnect(port: number): Promise<{ socket: net.Socket; received: () => Buffer; closed: Promise<void> }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    const chunks: Buffer[] = [];
    socket.on('data', (d) => chunks.push(d));
    const closed = new Promise<void>((r) => socket.on('close', () => r()));
    socket.on('error', () => {});
    socket.once('connect', () => resolve({ socket, received: () => Buffer.concat(chunks), closed }));
    socket.once('error', reject);
  });
}

/** One backend message as a raw client sees it. */
export interface RawMessage {
  type: string;
  body: Buffer;
}

/**
 * A raw protocol client: hand-made frontend messages out, parsed backend
 * messages in. `allowHalfOpen` keeps writing possible after the proxy ends.
 */
export function rawClient(port: number, allowHalfOpen = false) {
  const socket = net.connect({ host: '127.0.0.1', port, allowHalfOpen });
  const messages: RawMessage[] = [];
  let buf = Buffer.alloc(0);
  socket.on('data', (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    while (buf.length >= 5) {
      const len = buf.readInt32BE(1);
      if (buf.length < len + 1) break;
      messages.push({ type: String.fromCharCode(buf[0]), body: Buffer.from(buf.subarray(5, len + 1)) });
      buf = buf.subarray(len + 1);
    }
  });
  socket.on('error', () => {});
  const closed = new Promise<void>((r) => socket.on('close', () => r()));
  const count = (type: string) => messages.filter((m) => m.type === type).length;
  return {
    socket,
    messages,
    closed,
    count,
    /** Resolves when `pred` holds, or rejects after timeoutMs. */
    async until(pred: () => boolean, timeoutMs = 5000): Promise<void> {
      const deadline = Date.now() + timeoutMs;
      while (!pred()) {
        if (Date.now() > deadline) throw new Error(`timed out; got ${messages.map((m) => m.type).join(' ')}`);
        await sleep(5);
      }
    },
    /** Sends the startup packet and waits for the first ReadyForQuery. */
    async login(user: string, database = 'postgres'): Promise<void> {
      this.startup(user, database);
      await this.until(() => count('Z') >= 1);
    },
    /** Sends the startup packet only (what follows is pipelined behind the login). */
    startup(user: string, database = 'postgres'): void {
      socket.write(serializeStartup(user, database));
    },
  };
}

function serializeStartup(user: string, database: string): Buffer {
  const body = Buffer.from(`\0\x03\0\0user\0${user}\0database\0${database}\0\0`, 'latin1');
  const len = Buffer.alloc(4);
  len.writeInt32BE(body.length + 4);
  return Buffer.concat([len, body]);
}

/** A frontend message: type letter, int32 length, body. */
export function frontend(type: string, body: Buffer | string = Buffer.alloc(0)): Buffer {
  const b = typeof body === 'string' ? Buffer.from(body, 'utf8') : body;
  const h = Buffer.alloc(5);
  h[0] = type.charCodeAt(0);
  h.writeInt32BE(b.length + 4, 1);
  return Buffer.concat([h, b]);
}

export const simpleQuery = (sql: string) => frontend('Q', sql + '\0');

/** The fields of the first ErrorResponse in a byte stream, by field letter. */
export function errorFields(bytes: Buffer): Record<string, string> | null {
  let i = 0;
  while (i + 5 <= bytes.length) {
    const type = String.fromCharCode(bytes[i]);
    const len = bytes.readInt32BE(i + 1);
    if (type === 'E') {
      const fields: Record<string, string> = {};
      let j = i + 5;
      while (bytes[j] !== 0 && j < i + 1 + len) {
        const end = bytes.indexOf(0, j + 1);
        fields[String.fromCharCode(bytes[j])] = bytes.toString('utf8', j + 1, end);
        j = end + 1;
      }
      return fields;
    }
    i += 1 + len;
  }
  return null;
}

export async function scrape(adminPort: number, pathname = '/metrics'): Promise<{ status: number; body: string }> {
  const res = await fetch(`http://127.0.0.1:${adminPort}${pathname}`);
  return { status: res.status, body: await res.text() };
}

/** The value of one sample in Prometheus text, e.g. metric('pgbudget_clients_waiting{service="web"}'). */
export function metric(body: string, sample: string): number | undefined {
  const line = body.split('\n').find((l) => l.startsWith(sample + ' '));
  return line === undefined ? undefined : Number(line.slice(sample.length + 1));
}
