// Network fuzzer: hostile traffic against a live pgbudget (the real CLI, in
// a child process) in front of a throwaway PostgreSQL, while real clients
// work through other services of the same proxy and check their answers.
//
//   npm run fuzz                         # 300 s
//   npm run fuzz -- --seconds 60
//   npm run fuzz -- --cases 1000000 --seed 7
//
// Hostile cases, one connection each: random and mutated startup packets,
// SSLRequest, GSSENCRequest and CancelRequest with junk behind them, nonsense
// lengths, and after a real login (transaction and session mode, pipelined
// behind the startup packet or after the welcome): every frontend message
// type with a broken body, strings without terminators, truncated and
// oversized lengths, garbage pipelined after valid messages, mutated
// extended-protocol batches, all written in random chunk splits; and for the
// password services (SCRAM, md5, and a user only auth.query could know),
// well-formed and broken answers to the authentication request.
//
// Meanwhile pgbench (-S, simple and extended) and node-postgres clients that
// check every result run through services of their own. The run passes when
// the proxy is alive and logged no internal error, the real clients saw 0
// errors and 0 wrong results, every budget is back to 0 in use, and the
// proxy's RSS after the run is close to what it was once warmed up.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { stringify } from 'yaml';
import { startCluster, type Cluster } from '../helpers/cluster.js';
import { proxyConfig, repoRoot, run, scrape, sleep } from '../helpers/proxy.js';
import { msg, startupPacket } from '../helpers/wire.js';

export interface FuzzOptions {
  /** Stop after this many seconds of hostile traffic (default 300). */
  seconds?: number;
  /** Or after this many hostile cases, whichever comes first. */
  cases?: number;
  /** Hostile connections at once (default 64). */
  concurrency?: number;
  seed?: number;
  /** Progress lines to stderr. */
  verbose?: boolean;
}

export interface FuzzReport {
  seed: number;
  seconds: number;
  cases: number;
  /** Cases by generator, then by how they ended. */
  outcomes: Record<string, Record<string, number>>;
  proxyAlive: boolean;
  internalErrors: string[];
  rssKiB: { warm: number; end: number; max: number };
  rssFlat: boolean;
  pgbench: { transactions: number; failed: number; exitCodes: number[] };
  checker: { transactions: number; errors: number; wrong: number; firstProblem: string | null };
  leaks: string;
  passed: boolean;
}

// ---- a seeded random source (xorshift32), so a run can be repeated ----

class Random {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0 || 0x9e3779b9;
  }
  next(): number {
    let x = this.s;
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    this.s = x >>> 0;
    return this.s / 0x100000000;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }
  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
}

// ---- hostile cases ----

interface Case {
  kind: string;
  /** Bytes to write, each after the previous; `waitForReady` first waits for the welcome's ReadyForQuery. */
  writes: Buffer[];
  waitForReady: boolean;
}

const FRONTEND_TYPES = 'QPBDCESHXdcfFp'.split('');
const SSL = request(80877103);
const GSSENC = request(80877104);

function request(code: number, extra: Buffer = Buffer.alloc(0), length = 8 + extra.length): Buffer {
  const b = Buffer.alloc(8 + extra.length);
  b.writeInt32BE(length, 0);
  b.writeInt32BE(code, 4);
  extra.copy(b, 8);
  return b;
}

function mutate(r: Random, buf: Buffer): Buffer {
  let b = Buffer.from(buf);
  const n = 1 + r.int(3);
  for (let k = 0; k < n; k++) {
    const at = b.length ? r.int(b.length) : 0;
    switch (r.int(5)) {
      case 0:
        if (b.length) b[at] = r.int(256);
        break;
      case 1:
        b = b.subarray(0, at);
        break;
      case 2:
        b = Buffer.concat([b.subarray(0, at), r.bytes(1 + r.int(8)), b.subarray(at)]);
        break;
      case 3:
        if (b.length >= at + 4) b.writeInt32BE(r.pick([-1, 0, 3, 4, 5, 0x7fffffff, -0x80000000, r.int(1 << 20)]), at);
        break;
      case 4:
        b = Buffer.concat([b.subarray(0, at), b.subarray(Math.min(b.length, at + 1 + r.int(6)))]);
        break;
    }
  }
  return b;
}

/** A random chunking of `bytes`. */
function split(r: Random, bytes: Buffer): Buffer[] {
  if (bytes.length < 2 || r.chance(0.5)) return [bytes];
  const out: Buffer[] = [];
  let i = 0;
  while (i < bytes.length) {
    const n = 1 + r.int(Math.max(1, Math.min(64, bytes.length - i)));
    out.push(bytes.subarray(i, i + n));
    i += n;
  }
  return out;
}

function brokenBody(r: Random): Buffer {
  const type = r.pick(FRONTEND_TYPES);
  const body = r.bytes(r.int(24));
  // Strings without a terminator, often: bodies with no NUL at all.
  if (r.chance(0.5)) for (let i = 0; i < body.length; i++) if (body[i] === 0) body[i] = 0x61;
  return msg(type, body);
}

function badLength(r: Random): Buffer {
  const h = Buffer.alloc(5);
  h[0] = r.pick(FRONTEND_TYPES).charCodeAt(0);
  h.writeInt32BE(r.pick([-1, 0, 1, 3, -0x80000000, 0x7fffffff, 300 * 1024 * 1024, 1 + r.int(4)]), 1);
  return Buffer.concat([h, r.bytes(r.int(16))]);
}

function extendedBatch(sql: string): Buffer {
  return Buffer.concat([
    msg('P', `\0${sql}\0\0\0`),
    msg('B', Buffer.from([0, 0, 0, 0, 0, 0, 0, 0])),
    msg('D', 'P\0'),
    msg('E', Buffer.from([0, 0, 0, 0, 0])),
    msg('S'),
  ]);
}

const HOSTILE_USERS = ['fuzz_tx', 'fuzz_sess'];
/** Users of the password services: a SCRAM one, an md5 one, and one only auth.query can tell about (it has no role: the lookup finds none). */
const AUTH_USERS = ['fuzz_scram', 'fuzz_md5', 'fuzz_lookup'];

/** An answer to the password request: SASLInitialResponse or SASLResponse or PasswordMessage (all 'p'), well formed or not. */
function authAnswer(r: Random): Buffer {
  const nonce = r.bytes(18).toString('base64');
  switch (r.int(5)) {
    case 0: {
      // SASLInitialResponse: mechanism, int32 length, client-first-message (a valid one, or junk).
      const mech = r.pick(['SCRAM-SHA-256', 'SCRAM-SHA-256-PLUS', 'SCRAM-SHA-1', '']);
      const first = Buffer.from(r.pick([`n,,n=,r=${nonce}`, `y,,n=,r=${nonce}`, `p=tls-server-end-point,,n=,r=${nonce}`, `n,,r=${nonce}`, 'n,,', '']));
      const len = Buffer.alloc(4);
      len.writeInt32BE(r.pick([first.length, -1, first.length + 5, 0]));
      return msg('p', Buffer.concat([Buffer.from(`${mech}\0`), len, first]));
    }
    case 1:
      // SASLResponse: a client-final-message, with a proof that cannot be right.
      return msg('p', `c=biws,r=${nonce},p=${r.bytes(32).toString('base64')}`);
    case 2:
      // PasswordMessage: an md5 answer or a password in clear.
      return msg('p', `${r.pick([`md5${r.bytes(16).toString('hex')}`, 'secret', ''])}\0`);
    case 3:
      return mutate(r, msg('p', `SCRAM-SHA-256\0\0\0\0\x17n,,n=,r=${nonce.slice(0, 8)}`));
    default:
      return r.bytes(1 + r.int(40));
  }
}

function hostileCase(r: Random): Case {
  const login = startupPacket({ user: r.pick(HOSTILE_USERS), database: 'postgres' });
  const pick = r.int(13);
  const afterLogin = (kind: string, payload: Buffer): Case => {
    const pipelined = r.chance(0.5);
    return pipelined
      ? { kind: `${kind} (pipelined)`, writes: split(r, Buffer.concat([login, payload])), waitForReady: false }
      : { kind, writes: [login, ...split(r, payload)], waitForReady: true };
  };
  switch (pick) {
    case 0:
      return { kind: 'startup: random bytes', writes: split(r, r.bytes(1 + r.int(64))), waitForReady: false };
    case 1: {
      const b = r.bytes(8 + r.int(32));
      b.writeInt32BE(r.pick([-1, 0, 4, 7, 10001, 0x7fffffff, b.length + 1 + r.int(100)]), 0);
      return { kind: 'startup: nonsense length', writes: split(r, b), waitForReady: false };
    }
    case 2:
      return { kind: 'startup: mutated packet', writes: split(r, mutate(r, login)), waitForReady: false };
    case 3: {
      const [name, code] = r.pick([['SSLRequest', 80877103], ['GSSENCRequest', 80877104], ['CancelRequest', 80877102]] as const);
      const junk = r.bytes(r.int(24));
      const b = r.chance(0.5) ? Buffer.concat([request(code), junk]) : request(code, junk);
      return { kind: `startup: ${name} with junk`, writes: split(r, b), waitForReady: false };
    }
    case 4:
      return { kind: 'startup: SSL/GSSENC then mutated', writes: split(r, Buffer.concat([r.pick([SSL, GSSENC]), mutate(r, login)])), waitForReady: false };
    case 5:
      return afterLogin('login: broken message body', Buffer.concat(Array.from({ length: 1 + r.int(3) }, () => brokenBody(r))));
    case 6:
      return afterLogin('login: nonsense length', badLength(r));
    case 7:
      return afterLogin('login: garbage after valid messages', Buffer.concat([msg('Q', 'select 1\0'), r.bytes(1 + r.int(40))]));
    case 8:
      return afterLogin('login: mutated extended batch', mutate(r, extendedBatch(r.pick(['select 1', 'select $1', 'begin', 'select pg_sleep(0)']))));
    case 9:
      return afterLogin('login: mutated query', mutate(r, msg('Q', `${r.pick(['select 1', 'set x = 1', 'begin; select 1', 'deallocate all', 'copy (select 1) to stdout'])}\0`)));
    case 10:
      return afterLogin('login: valid then broken', Buffer.concat([extendedBatch('select 1'), brokenBody(r)]));
    case 11: {
      // Password services: answers to the authentication request, pipelined or not, in random splits.
      const startup = startupPacket({ user: r.pick(AUTH_USERS), database: 'postgres' });
      const answers = Buffer.concat(Array.from({ length: 1 + r.int(3) }, () => authAnswer(r)));
      return r.chance(0.5)
        ? { kind: 'auth: answers (pipelined)', writes: split(r, Buffer.concat([startup, answers])), waitForReady: false }
        : { kind: 'auth: answers', writes: [startup, ...split(r, answers)], waitForReady: false };
    }
    default:
      return afterLogin('login: random bytes', r.bytes(1 + r.int(48)));
  }
}

/** How long a case's connection stays open after its last write, for the proxy to answer or close. */
const LINGER_MS = 60;

/** Runs one case on a fresh connection; resolves with how it ended. */
function runCase(port: number, c: Case): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    let received = Buffer.alloc(0);
    let settled = false;
    let timer: NodeJS.Timeout | null = null;
    const finish = (how: string) => {
      if (settled) return;
      settled = true;
      if (timer) clearTimeout(timer);
      socket.destroy();
      resolve(how);
    };
    const outcome = (closed: boolean) => {
      const code = firstErrorCode(received);
      if (code) return `error ${code}`;
      if (closed) return received.length ? 'closed after replies' : 'closed silently';
      return received.length ? 'still open, replied' : 'still open, silent';
    };
    socket.on('error', () => {});
    socket.on('data', (d: Buffer) => {
      received = Buffer.concat([received, d]);
    });
    socket.on('close', () => finish(outcome(true)));
    socket.on('connect', async () => {
      try {
        for (let i = 0; i < c.writes.length; i++) {
          if (settled) return;
          socket.write(c.writes[i]);
          if (i === 0 && c.waitForReady) {
            const deadline = Date.now() + 3000;
            while (!settled && !hasReady(received) && Date.now() < deadline) await sleep(2);
          } else if (c.writes.length > 1) await new Promise((r) => setImmediate(r));
        }
      } catch {
        // the proxy closed while we wrote
      }
      timer = setTimeout(() => finish(outcome(false)), LINGER_MS);
    });
  });
}

function hasReady(b: Buffer): boolean {
  for (let i = 0; i + 5 <= b.length; ) {
    if (b[i] === 0x5a) return true;
    i += 1 + b.readInt32BE(i + 1);
  }
  return false;
}

function firstErrorCode(b: Buffer): string | null {
  for (let i = 0; i + 5 <= b.length; ) {
    const len = b.readInt32BE(i + 1);
    if (len < 4) return null;
    if (b[i] === 0x45) {
      const body = b.subarray(i + 5, i + 1 + len);
      const at = body.indexOf('\0C');
      if (at >= 0) return body.toString('latin1', at + 2, body.indexOf(0, at + 2));
      const first = body.indexOf('C');
      return first === 0 ? body.toString('latin1', 1, body.indexOf(0, 1)) : '?';
    }
    i += 1 + len;
  }
  return null;
}

// ---- the proxy under test ----

interface Proxy {
  proc: ChildProcess;
  port: number;
  adminPort: number;
  internalErrors: string[];
  exited: Promise<number | null>;
  stop(): Promise<void>;
}

async function startProxy(cluster: Cluster): Promise<Proxy> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'pgbudget-fuzz-'));
  const configPath = path.join(dir, 'pgbudget.yaml');
  const queue = { maxWaiting: 5000, timeoutMs: 5000 };
  // At log level error the ready line (info) is not printed: the ports are chosen here.
  const [port, adminPort] = [await freePort(), await freePort()];
  await writeFile(
    configPath,
    stringify(
      proxyConfig(cluster, {
        logLevel: 'error',
        // The default: every hand-out between clients applies its application_name.
        serverApplicationName: 'client',
        listen: `127.0.0.1:${port}`,
        admin: `127.0.0.1:${adminPort}`,
        startupTimeoutMs: 2000,
        upstream: { maxConnections: 16 },
        services: [
          { name: 'fuzz_tx', match: { user: 'fuzz_tx' }, budget: 3, poolMode: 'transaction', queue },
          { name: 'fuzz_sess', match: { user: 'fuzz_sess' }, budget: 3, poolMode: 'session', queue },
          { name: 'bench', match: { user: 'bench' }, budget: 4, poolMode: 'transaction', queue },
          { name: 'check', match: { user: 'check' }, budget: 3, poolMode: 'transaction', queue },
          { name: 'fuzz_scram', match: { user: ['fuzz_scram', 'fuzz_lookup'] }, budget: 2, poolMode: 'transaction', queue, auth: { method: 'scram-sha-256' } },
          { name: 'fuzz_md5', match: { user: 'fuzz_md5' }, budget: 2, poolMode: 'transaction', queue, auth: { method: 'md5' } },
        ],
        // The password exchanges, and the lookup of a user only the database could know (none: no such role).
        auth: { method: 'trust', users: [{ name: 'fuzz_scram', password: 'fuzz-pw' }, { name: 'fuzz_md5', password: 'fuzz-pw' }], query: { user: 'postgres' } },
      }),
    ),
  );
  const proc = spawn(process.execPath, [path.join(repoRoot, 'dist', 'cli.js'), '--config', configPath], { stdio: ['ignore', 'pipe', 'pipe'] });
  // At level error, every line the proxy prints is a finding.
  const internalErrors: string[] = [];
  let buffered = '';
  const onOutput = (d: Buffer) => {
    buffered += d.toString();
    const lines = buffered.split('\n');
    buffered = lines.pop()!;
    for (const line of lines) if (line.trim()) internalErrors.push(line.slice(0, 2000));
  };
  proc.stdout!.on('data', onOutput);
  proc.stderr!.on('data', onOutput);
  const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
  const deadline = Date.now() + 15_000;
  while (!(await scrape(adminPort, '/readyz').then((x) => x.status === 200, () => false))) {
    if (proc.exitCode !== null) throw new Error(`pgbudget exited with ${proc.exitCode} before it was ready: ${internalErrors.join('\n')}`);
    if (Date.now() > deadline) throw new Error('pgbudget not ready within 15 s');
    await sleep(50);
  }
  return {
    proc,
    port,
    adminPort,
    internalErrors,
    exited,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGTERM');
        const timer = setTimeout(() => proc.kill('SIGKILL'), 15_000);
        await exited;
        clearTimeout(timer);
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : 0;
}

// ---- the real clients ----

/** pgbench in rounds of at most 20 s until `until()` says stop, so a run that ends at a case count ends soon after. */
async function pgbenchRounds(port: number, mode: 'simple' | 'extended', deadline: number, stopped: () => boolean) {
  const total = { code: 0, processed: 0, failed: 0, rounds: 0 };
  while (!stopped()) {
    const seconds = Math.max(1, Math.min(20, Math.round((deadline - Date.now()) / 1000)));
    const r = await pgbenchLoad(port, seconds, mode);
    total.rounds++;
    total.processed += r.processed;
    total.failed += r.failed;
    if (r.code !== 0) total.code = r.code;
    if (Date.now() >= deadline) break;
  }
  return total;
}

async function pgbenchLoad(port: number, seconds: number, mode: 'simple' | 'extended') {
  const r = await run(
    'pgbench',
    // Rate-limited: the real clients must keep working, not take the CPU from the hostile traffic.
    ['-n', '-S', '-M', mode, '-c', '2', '-j', '1', '-R', '500', '-T', String(seconds), '-h', '127.0.0.1', '-p', String(port), '-U', 'bench', 'postgres'],
    { timeoutMs: (seconds + 120) * 1000 },
  );
  const processed = Number(/number of transactions actually processed: (\d+)/.exec(r.stdout)?.[1] ?? 0);
  const failed = Number(/number of failed transactions: (\d+)/.exec(r.stdout)?.[1] ?? 0);
  return { code: r.code, processed, failed, stderr: r.stderr };
}

/** node-postgres clients that check every answer: unnamed and named statements, simple queries, transactions. */
function checkers(port: number, count: number, r: Random) {
  const stats = { transactions: 0, errors: 0, wrong: 0, firstProblem: null as string | null };
  let running = true;
  const problem = (what: string) => {
    stats.firstProblem ??= what;
  };
  const loops = Array.from({ length: count }, async (_, id) => {
    const c = new pg.Client({ host: '127.0.0.1', port, user: 'check', database: 'postgres' });
    c.on('error', (e) => {
      stats.errors++;
      problem(`client ${id}: ${e.message}`);
    });
    try {
      await c.connect();
      while (running) {
        const a = r.int(1_000_000);
        const b = r.int(1_000_000);
        const tag = `c${id}-${a}`;
        try {
          switch (r.int(4)) {
            case 0: {
              const res = await c.query('select $1::int + $2::int as s, $3::text as tag', [a, b, tag]);
              if (res.rows[0]?.s !== a + b || res.rows[0]?.tag !== tag) (stats.wrong++, problem(`unnamed: ${JSON.stringify(res.rows)}`));
              break;
            }
            case 1: {
              const res = await c.query({ name: 'add', text: 'select $1::int + $2::int as s, $3::text as tag', values: [a, b, tag] });
              if (res.rows[0]?.s !== a + b || res.rows[0]?.tag !== tag) (stats.wrong++, problem(`named: ${JSON.stringify(res.rows)}`));
              break;
            }
            case 2: {
              const res = await c.query(`select ${a} + ${b} as s, '${tag}' as tag`);
              if (res.rows[0]?.s !== a + b || res.rows[0]?.tag !== tag) (stats.wrong++, problem(`simple: ${JSON.stringify(res.rows)}`));
              break;
            }
            default: {
              await c.query('begin');
              await c.query('select set_config($1, $2, true)', ['pgbudget.tag', tag]);
              const res = await c.query("select current_setting('pgbudget.tag') as tag");
              await c.query('commit');
              if (res.rows[0]?.tag !== tag) (stats.wrong++, problem(`transaction: ${JSON.stringify(res.rows)}`));
            }
          }
          stats.transactions++;
          if (stats.transactions % 8 === 0) await sleep(1);
        } catch (err) {
          stats.errors++;
          problem(`client ${id}: ${(err as Error).message}`);
        }
      }
      await c.end();
    } catch (err) {
      stats.errors++;
      problem(`client ${id}: ${(err as Error).message}`);
    }
  });
  return {
    stats,
    async stop() {
      running = false;
      await Promise.all(loops);
    },
  };
}

// ---- the run ----

async function busyServices(adminPort: number): Promise<string> {
  const status = JSON.parse((await scrape(adminPort, '/status')).body) as {
    services: { name: string; serverConnections: { active: number; opening: number }; clients: { waiting: number } }[];
  };
  return status.services
    .filter((s) => s.serverConnections.active > 0 || s.serverConnections.opening > 0 || s.clients.waiting > 0)
    .map((s) => `${s.name}: ${JSON.stringify(s.serverConnections)} waiting ${s.clients.waiting}`)
    .join('; ');
}

export async function runFuzz(options: FuzzOptions = {}): Promise<FuzzReport> {
  const seconds = options.seconds ?? 300;
  const maxCases = options.cases ?? Infinity;
  const concurrency = options.concurrency ?? 64;
  const seed = options.seed ?? (Date.now() & 0x7fffffff);
  const log = (line: string) => options.verbose && process.stderr.write(`fuzz: ${line}\n`);
  const r = new Random(seed);
  const cluster = await startCluster({ maxConnections: 40, users: ['fuzz_tx', 'fuzz_sess', 'bench', 'check'] });
  let proxy: Proxy | null = null;
  try {
    const init = await run('pgbench', ['-i', '-s', '1', '-q', '-h', '127.0.0.1', '-p', String(cluster.port), '-U', 'bench', 'postgres'], { timeoutMs: 120_000 });
    if (init.code !== 0) throw new Error(`pgbench -i: ${init.stderr}`);
    proxy = await startProxy(cluster);
    const p = proxy;
    log(`seed ${seed}; pgbudget pid ${p.proc.pid} on ${p.port}`);

    const started = Date.now();
    const deadline = started + seconds * 1000;
    let hostileDone = false;
    const benches = (['simple', 'extended'] as const).map((mode) => pgbenchRounds(p.port, mode, deadline, () => hostileDone));
    const check = checkers(p.port, 3, new Random(seed ^ 0x5bd1e995));

    const outcomes: Record<string, Record<string, number>> = {};
    let cases = 0;
    let warm = 0;
    let max = 0;
    const warmAt = started + Math.min(seconds * 250, 30_000);
    const sampler = setInterval(() => {
      if (p.proc.exitCode !== null) return;
      const rss = rssKiB(p.proc.pid!);
      max = Math.max(max, rss);
      if (!warm && Date.now() >= warmAt) warm = rss;
    }, 500);
    const progress = setInterval(() => log(`${cases} cases, ${Math.round((Date.now() - started) / 1000)} s, RSS ${rssKiB(p.proc.pid!)} KiB`), 10_000);
    const workers = Array.from({ length: concurrency }, async () => {
      while (Date.now() < deadline && cases < maxCases && p.proc.exitCode === null) {
        cases++;
        const c = hostileCase(r);
        const how = await runCase(p.port, c);
        const byKind = (outcomes[c.kind] ??= {});
        byKind[how] = (byKind[how] ?? 0) + 1;
      }
    });
    await Promise.all(workers);
    hostileDone = true;
    clearInterval(progress);
    await check.stop();
    // pgbench runs in rounds: a run that stopped early at `cases` waits for the last round only.
    const benchResults = await Promise.all(benches);
    clearInterval(sampler);
    const proxyAlive = p.proc.exitCode === null && p.proc.signalCode === null && (await scrape(p.adminPort, '/healthz').then((x) => x.status === 200, () => false));
    let leaks = proxyAlive ? await busyServices(p.adminPort) : 'proxy not running';
    for (let i = 0; i < 100 && leaks; i++) {
      await sleep(100);
      leaks = await busyServices(p.adminPort);
    }
    await sleep(2000); // let the last connections' garbage go
    const end = proxyAlive ? rssKiB(p.proc.pid!) : 0;
    if (!warm) warm = end;
    const rssFlat = end <= warm + Math.max(32 * 1024, warm / 2);
    const report: FuzzReport = {
      seed,
      seconds: Math.round((Date.now() - started) / 1000),
      cases,
      outcomes,
      proxyAlive,
      internalErrors: p.internalErrors.slice(0, 20),
      rssKiB: { warm, end, max },
      rssFlat,
      pgbench: {
        transactions: benchResults.reduce((n, b) => n + b.processed, 0),
        failed: benchResults.reduce((n, b) => n + b.failed, 0),
        exitCodes: benchResults.map((b) => b.code),
      },
      checker: check.stats,
      leaks,
      passed: false,
    };
    report.passed =
      proxyAlive &&
      p.internalErrors.length === 0 &&
      rssFlat &&
      !leaks &&
      report.pgbench.failed === 0 &&
      report.pgbench.exitCodes.every((c) => c === 0) &&
      report.pgbench.transactions > 0 &&
      check.stats.errors === 0 &&
      check.stats.wrong === 0 &&
      check.stats.transactions > 0;
    return report;
  } finally {
    await proxy?.stop();
    await cluster.destroy();
  }
}

export function summary(r: FuzzReport): string {
  const lines = [
    `fuzz: ${r.passed ? 'PASSED' : 'FAILED'}  seed ${r.seed}, ${r.cases} hostile cases in ${r.seconds} s`,
    `proxy alive: ${r.proxyAlive}; internal errors logged: ${r.internalErrors.length}; budgets back to 0 in use: ${r.leaks ? `no (${r.leaks})` : 'yes'}`,
    `RSS: ${r.rssKiB.warm} KiB warmed up, ${r.rssKiB.end} KiB at the end, ${r.rssKiB.max} KiB at most (${r.rssFlat ? 'flat' : 'GREW'})`,
    `pgbench: ${r.pgbench.transactions} transactions, ${r.pgbench.failed} failed, exit codes ${r.pgbench.exitCodes.join(',')}`,
    `node-postgres checkers: ${r.checker.transactions} transactions, ${r.checker.errors} errors, ${r.checker.wrong} wrong results${r.checker.firstProblem ? ` (first: ${r.checker.firstProblem})` : ''}`,
    'hostile cases by kind and ending:',
  ];
  for (const kind of Object.keys(r.outcomes).sort()) {
    const ends = Object.entries(r.outcomes[kind]).sort((a, b) => b[1] - a[1]);
    lines.push(`  ${kind}: ${ends.map(([how, n]) => `${how} ${n}`).join(', ')}`);
  }
  for (const e of r.internalErrors) lines.push(`  logged: ${e}`);
  return lines.join('\n');
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({
    options: { seconds: { type: 'string' }, cases: { type: 'string' }, concurrency: { type: 'string' }, seed: { type: 'string' }, json: { type: 'boolean' } },
  });
  const report = await runFuzz({
    seconds: values.seconds ? Number(values.seconds) : undefined,
    cases: values.cases ? Number(values.cases) : undefined,
    concurrency: values.concurrency ? Number(values.concurrency) : undefined,
    seed: values.seed ? Number(values.seed) : undefined,
    verbose: true,
  });
  process.stdout.write((values.json ? JSON.stringify(report, null, 2) : summary(report)) + '\n');
  process.exit(report.passed ? 0 : 1);
}
