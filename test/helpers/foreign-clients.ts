/**
 * Non-Node PostgreSQL clients (pgjdbc, psycopg2) running the scenario programs
 * in test/clients/ against a host/port: prepared statements across
 * transactions, an error inside a transaction, COPY in/out, cancel, and
 * session state (LISTEN/NOTIFY, SET, SQL PREPARE). Each program prints
 * `SCENARIO OK <clientId>` as its last stdout line on success.
 *
 * - JDBC: `java`, `javac` and a pgjdbc jar are needed. The jar is
 *   `$PGBUDGET_TEST_PGJDBC_JAR`, else the newest
 *   ~/.m2/repository/org/postgresql/postgresql/<v>/postgresql-<v>.jar, else
 *   Debian's /usr/share/java/postgresql.jar.
 *   Every .java file in test/clients (Scenario, ShapeScenario, AuthProbe) is
 *   compiled once per process into a temp dir under os.tmpdir() (removed on
 *   exit); runJava runs any of them.
 * - psycopg2: the first of `$PGBUDGET_TEST_PYTHON`, /usr/bin/python3 (Debian's
 *   python3-psycopg2), `python3` on PATH that can `import psycopg2`.
 *   runPython runs any program in test/clients with it (auth_probe.py).
 *
 * The run* functions never reject: a non-zero exit resolves with its code;
 * an unavailable client resolves with code 127, a timeout with code 124 (the
 * child is SIGKILLed), death by signal with 128 + signal number.
 */
import { execFile, spawn } from 'node:child_process';
import { existsSync, readdirSync, rmSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export interface ForeignResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface ForeignScenarioOptions {
  host: string;
  port: number;
  user: string;
  database: string;
  clientId: number;
  /** default 20 */
  iterations?: number;
  /** default 120000; the child is SIGKILLed and the result has code 124 */
  timeoutMs?: number;
}

/** compiled to build/test/helpers/foreign-clients.js: three levels up is the repo root */
const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const clientsDir = path.join(repoRoot, 'test', 'clients');
const javaSource = path.join(clientsDir, 'Scenario.java');
const pythonScript = path.join(clientsDir, 'scenario.py');

const DEFAULT_ITERATIONS = 20;
const DEFAULT_TIMEOUT_MS = 120_000;
const CODE_UNAVAILABLE = 127;
const CODE_TIMEOUT = 124;

// ---------------------------------------------------------------------------
// process helpers

/** runs file with args; resolves with code/stdout/stderr, never rejects */
function run(file: string, args: string[], timeoutMs: number, env?: NodeJS.ProcessEnv): Promise<ForeignResult> {
  return new Promise((resolve) => {
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    let settled = false;
    const finish = (r: ForeignResult): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(r);
    };
    const child = spawn(file, args, {
      cwd: os.tmpdir(),
      env: env ?? process.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stdout.on('data', (d: string) => {
      stdout += d;
    });
    child.stderr.on('data', (d: string) => {
      stderr += d;
    });
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('error', (err) => {
      finish({ code: CODE_UNAVAILABLE, stdout, stderr: `${stderr}${stderr ? '\n' : ''}${file}: ${err.message}` });
    });
    child.on('close', (code, signal) => {
      if (timedOut) {
        finish({ code: CODE_TIMEOUT, stdout, stderr: `${stderr}${stderr ? '\n' : ''}timed out after ${timeoutMs} ms` });
      } else if (code !== null) {
        finish({ code, stdout, stderr });
      } else {
        const num = signal ? (os.constants.signals[signal] ?? 0) : 0;
        finish({ code: 128 + num, stdout, stderr: `${stderr}${stderr ? '\n' : ''}killed by ${signal ?? 'signal'}` });
      }
    });
  });
}

/** true when `file args` exits 0 within 20 s */
function succeeds(file: string, args: string[]): Promise<boolean> {
  return new Promise((resolve) => {
    execFile(file, args, { timeout: 20_000, cwd: os.tmpdir() }, (err) => resolve(!err));
  });
}

function unavailable(what: string): ForeignResult {
  return { code: CODE_UNAVAILABLE, stdout: '', stderr: `${what} not available` };
}

function scenarioArgs(opts: ForeignScenarioOptions): string[] {
  return [
    opts.host,
    String(opts.port),
    opts.user,
    opts.database,
    String(opts.clientId),
    String(opts.iterations ?? DEFAULT_ITERATIONS),
  ];
}

// ---------------------------------------------------------------------------
// JDBC

function compareVersions(a: string, b: string): number {
  const pa = a.split(/[.-]/);
  const pb = b.split(/[.-]/);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const x = pa[i] ?? '';
    const y = pb[i] ?? '';
    const nx = Number.parseInt(x, 10);
    const ny = Number.parseInt(y, 10);
    if (!Number.isNaN(nx) && !Number.isNaN(ny) && nx !== ny) return nx - ny;
    if (x !== y) return x < y ? -1 : 1;
  }
  return 0;
}

function findPgjdbcJar(): string | undefined {
  const fromEnv = process.env.PGBUDGET_TEST_PGJDBC_JAR;
  if (fromEnv) return existsSync(fromEnv) ? fromEnv : undefined;
  const base = path.join(os.homedir(), '.m2', 'repository', 'org', 'postgresql', 'postgresql');
  // Debian's libpostgresql-jdbc-java, which test/setup/provision.sh installs where Maven's cache has none.
  const debian = '/usr/share/java/postgresql.jar';
  let versions: string[];
  try {
    versions = readdirSync(base);
  } catch {
    return existsSync(debian) ? debian : undefined;
  }
  const jars = versions
    .filter((v) => existsSync(path.join(base, v, `postgresql-${v}.jar`)))
    .sort(compareVersions)
    .map((v) => path.join(base, v, `postgresql-${v}.jar`));
  return jars[jars.length - 1] ?? (existsSync(debian) ? debian : undefined);
}

let jdbcAvailablePromise: Promise<boolean> | undefined;

/** java + javac run, a pgjdbc jar is found and test/clients/Scenario.java exists */
export function jdbcAvailable(): Promise<boolean> {
  jdbcAvailablePromise ??= (async () => {
    if (!findPgjdbcJar() || !existsSync(javaSource)) return false;
    const [java, javac] = await Promise.all([succeeds('java', ['-version']), succeeds('javac', ['-version'])]);
    return java && javac;
  })();
  return jdbcAvailablePromise;
}

type Compiled = { ok: true; jar: string; classDir: string } | { ok: false; result: ForeignResult };

let compiledPromise: Promise<Compiled> | undefined;

function compileScenario(): Promise<Compiled> {
  compiledPromise ??= (async (): Promise<Compiled> => {
    if (!(await jdbcAvailable())) return { ok: false, result: unavailable('JDBC (java, javac, pgjdbc jar)') };
    const jar = findPgjdbcJar();
    if (!jar) return { ok: false, result: unavailable('pgjdbc jar') };
    const classDir = await mkdtemp(path.join(os.tmpdir(), 'pgbudget-jdbc-scenario-'));
    process.once('exit', () => {
      try {
        rmSync(classDir, { recursive: true, force: true });
      } catch {
        // best effort
      }
    });
    // Every Java program in test/clients at once: one javac start.
    const sources = readdirSync(clientsDir).filter((f) => f.endsWith('.java')).map((f) => path.join(clientsDir, f));
    const res = await run('javac', ['-encoding', 'UTF-8', '-cp', jar, '-d', classDir, ...sources], 120_000);
    if (res.code !== 0) {
      return { ok: false, result: { ...res, stderr: `javac failed:\n${res.stderr}` } };
    }
    return { ok: true, jar, classDir };
  })();
  return compiledPromise;
}

/** compiles Scenario.java once per process, then runs `java -cp <jar>:<dir> Scenario ...` */
export function runJdbcScenario(opts: ForeignScenarioOptions): Promise<ForeignResult> {
  return runJava('Scenario', scenarioArgs(opts), opts.timeoutMs ?? DEFAULT_TIMEOUT_MS);
}

/** Runs one of the Java programs in test/clients (compiled once per process) with the JDBC driver. */
export async function runJava(className: string, args: string[], timeoutMs = DEFAULT_TIMEOUT_MS): Promise<ForeignResult> {
  const compiled = await compileScenario();
  if (!compiled.ok) return compiled.result;
  const javaArgs = [
    // small, fast-starting JVMs: many may run at once
    '-XX:+UseSerialGC',
    '-XX:TieredStopAtLevel=1',
    '-Xmx128m',
    '-cp',
    `${compiled.jar}${path.delimiter}${compiled.classDir}`,
    className,
    ...args,
  ];
  return run('java', javaArgs, timeoutMs);
}

// ---------------------------------------------------------------------------
// psycopg2

let pythonPromise: Promise<string | undefined> | undefined;

function findPython(): Promise<string | undefined> {
  pythonPromise ??= (async () => {
    const candidates = [process.env.PGBUDGET_TEST_PYTHON, '/usr/bin/python3', 'python3'].filter(
      (c): c is string => !!c,
    );
    for (const py of candidates) {
      if (await succeeds(py, ['-c', 'import psycopg2'])) return py;
    }
    return undefined;
  })();
  return pythonPromise;
}

/** some python3 (see the file comment) can import psycopg2 and test/clients/scenario.py exists */
export async function psycopg2Available(): Promise<boolean> {
  return existsSync(pythonScript) && (await findPython()) !== undefined;
}

/** runs `<python> test/clients/scenario.py ...` */
export function runPsycopg2Scenario(opts: ForeignScenarioOptions): Promise<ForeignResult> {
  return runPython('scenario.py', scenarioArgs(opts), opts.timeoutMs ?? DEFAULT_TIMEOUT_MS);
}

/** Runs one of the Python programs in test/clients (`script`, e.g. auth_probe.py) with the python3 that has psycopg2. */
export async function runPython(script: string, args: string[], timeoutMs = DEFAULT_TIMEOUT_MS): Promise<ForeignResult> {
  const py = await findPython();
  const file = path.join(clientsDir, script);
  if (!py || !existsSync(file)) return unavailable('psycopg2 (python3 with psycopg2)');
  const env = { ...process.env, PYTHONDONTWRITEBYTECODE: '1', PYTHONUNBUFFERED: '1' };
  return run(py, [file, ...args], timeoutMs, env);
}
