// The real CLI: config validation before listening, SIGHUP reload under load
// without dropping anyone, SIGTERM drain, and --upstream.
import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { withCluster } from '../helpers/cluster.js';
import { assertNoLeaksHttp, psql, repoRoot, run, scrape, sleep, spawnProxy } from '../helpers/proxy.js';

const cluster = await withCluster(t, { maxConnections: 20, users: ['app', 'other'] });
const cli = path.join(repoRoot, 'dist', 'cli.js');

t.test('an invalid config names the exact field and exits non-zero before listening', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'pgbudget-badcfg-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'bad.yaml');
  await writeFile(file, 'listen: "127.0.0.1:0"\nservices:\n  - name: a\n    budget: 2\n  - name: b\n    budget: -3\n');
  const r = await run(process.execPath, [cli, '--config', file]);
  t.equal(r.code, 2);
  t.match(r.stderr, 'pgbudget: invalid config: services[1].budget: must be a positive integer (got -3)');
  t.notMatch(r.stdout, /pgbudget ready/);
  const missing = await run(process.execPath, [cli, '--config', path.join(dir, 'nope.yaml')]);
  t.equal(missing.code, 2);
  t.match(missing.stderr, /nope\.yaml: cannot read/);
});

t.test('--upstream starts one default service', async (t) => {
  const child = spawn(process.execPath, [cli, '--upstream', `postgres://127.0.0.1:${cluster.port}`, '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exited = new Promise<number | null>((r) => child.on('exit', r));
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  let out = '';
  const ready = await new Promise<string>((resolve) => child.stdout.on('data', (d) => {
    out += d;
    const line = out.split('\n').find((l) => l.includes('pgbudget ready'));
    if (line) resolve(line);
  }));
  const port = JSON.parse(ready).listen.split(':').pop();
  const r = await psql(`postgres://app@127.0.0.1:${port}/postgres`, 'select current_user');
  t.equal(r.stdout.trim(), 'app', r.stderr);
  child.kill('SIGTERM');
  t.equal(await exited, 0, 'SIGTERM exits 0');
});

t.test('SIGHUP reload under load: budgets change, nobody is dropped; a bad file is rejected', async (t) => {
  const base = {
    upstream: { maxConnections: 10 },
    services: [{ name: 'app', match: { user: 'app' }, budget: 1, poolMode: 'transaction', queue: { timeoutMs: 20_000 } }],
  };
  const p = await spawnProxy(t, cluster, base);
  let running = true;
  let errors = 0;
  let queries = 0;
  const workers = Array.from({ length: 6 }, async () => {
    const c = new pg.Client({ connectionString: p.url('app') });
    c.on('error', () => errors++);
    await c.connect();
    while (running) {
      try {
        await c.query('select pg_sleep(0.02)');
        queries++;
      } catch {
        errors++;
      }
    }
    await c.end();
  });
  await sleep(400);
  let max = 0;
  const sample = async () => {
    const n = await cluster.countClientBackends({ applicationName: 'pgbudget:app' });
    max = Math.max(max, n);
  };
  for (let i = 0; i < 10; i++) await sample();
  t.equal(max, 1, 'budget 1 holds before the reload');
  await p.writeConfig({ ...base, services: [{ ...base.services[0], budget: 3 }] });
  p.proc.kill('SIGHUP');
  await p.waitForLog(/config reloaded/);
  await sleep(300);
  max = 0;
  for (let i = 0; i < 30; i++) {
    await sample();
    await sleep(10);
  }
  t.equal(max, 3, 'the new budget of 3 is used after the reload');
  const status = JSON.parse((await scrape(p.adminPort, '/status')).body);
  t.equal(status.services[0].budget, 3);

  await writeFile(p.configPath, 'services: [{ name: app, budget: -1 }]\n');
  p.proc.kill('SIGHUP');
  const rejected = await p.waitForLog(/config reload rejected/);
  t.match(rejected, /services\[0\]\.budget: must be a positive integer \(got -1\)/);
  t.equal(JSON.parse((await scrape(p.adminPort, '/status')).body).services[0].budget, 3, 'the old config is kept');
  running = false;
  await Promise.all(workers);
  t.equal(errors, 0, `no client saw an error across two reloads (${queries} queries)`);
  t.ok(queries > 50);
  await assertNoLeaksHttp(t, p.adminPort);
  p.proc.kill('SIGTERM');
  t.equal(await p.exited, 0);
});

t.test('SIGTERM: stop accepting, let transactions finish, then exit 0', async (t) => {
  const p = await spawnProxy(t, cluster, {
    shutdownTimeoutMs: 10_000,
    services: [
      { name: 'app', match: { user: 'app' }, budget: 2, poolMode: 'transaction' },
      { name: 'other', match: { user: 'other' }, budget: 2, poolMode: 'session' },
    ],
  });
  const inTx = new pg.Client({ connectionString: p.url('app') });
  const idle = new pg.Client({ connectionString: p.url('other') });
  const idleError = new Promise<Error & { code?: string }>((r) => idle.on('error', r));
  const txError = new Promise<Error & { code?: string }>((r) => inTx.on('error', r));
  await inTx.connect();
  await idle.connect();
  await idle.query('select 1');
  await inTx.query('begin');
  await inTx.query('create temp table drain_check(a int)');
  p.proc.kill('SIGTERM');
  const idleErr = await idleError;
  t.equal(idleErr.code, '57P01', 'an idle client is told at once');
  t.match(idleErr.message, /pgbudget: terminating connection because the proxy is shutting down/);
  const refused = await psql(p.url('app'), 'select 1');
  t.not(refused.code, 0, 'new clients are refused');
  await sleep(300);
  await inTx.query('insert into drain_check values (1)');
  const r = await inTx.query('commit');
  t.equal(r.command, 'COMMIT', 'the transaction in flight finished');
  const txErr = await txError;
  t.equal(txErr.code, '57P01', 'then that client is told too');
  t.equal(await p.exited, 0, 'exit code 0');
  t.match(p.logs.join('\n'), /"msg":"stopped"/);
  const left = await cluster.countClientBackends({ applicationName: 'pgbudget:app' });
  t.equal(left, 0, 'every server connection was closed');
});

t.test('with no upstream configured, pgbudget starts an embedded PostgreSQL and proxies to it', async (t) => {
  const env = { ...process.env };
  delete env.DATABASE_URL;
  delete env.PGBUDGET_CONFIG;
  const child = spawn(process.execPath, [cli, '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'pipe'], env });
  const exited = new Promise<number | null>((r) => child.on('exit', r));
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  let out = '';
  child.stderr.on('data', (d) => (out += d));
  const ready = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`not ready in 60 s:\n${out}`)), 60_000);
    child.stdout.on('data', (d) => {
      out += d;
      const line = out.split('\n').find((l) => l.includes('pgbudget ready'));
      // The ready line (pino, written asynchronously) and the banner (a plain
      // stdout write) come in either order, and may come in separate chunks.
      if (line && out.includes('Metrics: http')) {
        clearTimeout(timer);
        resolve(line);
      }
    });
  });
  t.match(out, /DATABASE_URL=postgres:\/\/postgres@127\.0\.0\.1:\d+\/postgres/, 'it prints the DATABASE_URL to use');
  const port = JSON.parse(ready).listen.split(':').pop();
  const r = await psql(`postgres://postgres@127.0.0.1:${port}/postgres`, "select current_setting('server_version_num')::int >= 150000");
  t.equal(r.stdout.trim(), 't', r.stderr);
  child.kill('SIGTERM');
  t.equal(await exited, 0, 'SIGTERM stops the proxy and the embedded database, exit 0');
});

t.test('SIGHUPs close together apply in order: the file as last written wins', async (t) => {
  const config = (budget: number) => ({
    services: [{ name: 'app', match: { user: 'app' }, budget, poolMode: 'transaction' }],
  });
  const p = await spawnProxy(t, cluster, config(1));
  const outcomes = () => p.logs.filter((l) => /config reloaded|config reload rejected/.test(l)).length;
  for (let round = 0; round < 8; round++) {
    const before = outcomes();
    const last = 2 + (round % 3);
    await p.writeConfig(config(7));
    p.proc.kill('SIGHUP');
    await p.writeConfig(config(last));
    p.proc.kill('SIGHUP');
    // The kernel merges a SIGHUP that arrives while one is still pending, so
    // two sent back to back may be one reload: the promise is that the file
    // as last written wins, and that every reload that runs is reported.
    const budgetNow = async () => JSON.parse((await scrape(p.adminPort, '/status')).body).services[0].budget as number;
    const deadline = Date.now() + 5000;
    while ((outcomes() < before + 1 || (await budgetNow()) !== last) && Date.now() < deadline) await sleep(20);
    const ran = outcomes() - before;
    t.ok(ran === 1 || ran === 2, `round ${round}: ${ran} reload(s) ran for two SIGHUPs`);
    t.equal(await budgetNow(), last, `round ${round}: the last file (budget ${last}) wins`);
  }
  p.proc.kill('SIGTERM');
  t.equal(await p.exited, 0);
});

t.test('an admin address that cannot be bound: exit 1 naming it, never half started', async (t) => {
  const net = await import('node:net');
  const taken = net.createServer();
  await new Promise<void>((r) => taken.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => taken.close());
  const port = (taken.address() as { port: number }).port;
  const r = await run(process.execPath, [cli, '--upstream', `postgres://127.0.0.1:${cluster.port}`, '--listen', '127.0.0.1:0', '--admin', `127.0.0.1:${port}`], {
    timeoutMs: 20_000,
  });
  t.equal(r.code, 1, 'exits non-zero');
  t.match(r.stderr, `pgbudget: cannot start: cannot listen on the admin address 127.0.0.1:${port}: `);
  t.match(r.stderr, /EADDRINUSE/);
  t.notMatch(r.stdout, /pgbudget ready/);
});

t.test('the shutdown drain has a bound: a transaction that never ends is cut at shutdownTimeoutMs', async (t) => {
  const p = await spawnProxy(t, cluster, {
    shutdownTimeoutMs: 500,
    services: [{ name: 'app', match: { user: 'app' }, budget: 2, poolMode: 'transaction' }],
  });
  const c = new pg.Client({ connectionString: p.url('app') });
  const gone = new Promise<void>((r) => c.on('end', () => r()));
  c.on('error', () => undefined);
  await c.connect();
  await c.query('begin');
  const started = Date.now();
  p.proc.kill('SIGTERM');
  t.equal(await p.exited, 0, 'exit code 0');
  const took = Date.now() - started;
  t.ok(took >= 500 && took < 4000, `exited ${took} ms after SIGTERM (shutdownTimeoutMs 500)`);
  await gone;
  t.equal(await cluster.countClientBackends({ applicationName: 'pgbudget:app' }), 0, 'its server connection was closed');
});

/** Starts the CLI through `env -u NODE_OPTIONS` (tap's process-on-spawn puts NODE_OPTIONS back into every spawn, and its hook calls process.binding itself). */
async function startBare(t: { teardown(fn: () => unknown): void }, nodeArgs: string[], env: NodeJS.ProcessEnv = {}) {
  const child = spawn(
    'env',
    ['-u', 'NODE_OPTIONS', process.execPath, ...nodeArgs, cli, '--upstream', `postgres://127.0.0.1:${cluster.port}`, '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0'],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } },
  );
  const exited = new Promise<number | null>((r) => child.on('exit', r));
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  let out = '';
  const ready = await new Promise<string>((resolve, reject) => {
    child.stdout.on('data', (d) => {
      out += d;
      const line = out.split('\n').find((l) => l.includes('pgbudget ready'));
      if (line) resolve(line);
    });
    let err = '';
    child.stderr.on('data', (d) => (err += d));
    child.on('exit', (code) => reject(new Error(`exited ${code} before ready: ${out}${err}`)));
  });
  const port = Number(JSON.parse(ready).listen.split(':').pop());
  return { child, exited, port, output: () => out };
}

t.test('PGBUDGET_IO=portable uses no Node internals: it runs under --throw-deprecation and serves clients', async (t) => {
  const { child, exited, port } = await startBare(t, ['--pending-deprecation', '--throw-deprecation'], { PGBUDGET_IO: 'portable' });
  const r = await psql(`postgres://app@127.0.0.1:${port}/postgres`, 'select 40 + 2');
  t.equal(r.stdout.trim(), '42', r.stderr);
  child.kill('SIGTERM');
  t.equal(await exited, 0, 'SIGTERM exits 0; no deprecation was thrown');
});

t.test('fast-path internals that changed meaning fail the start-up self-test: one warning, then portable I/O, same results', async (t) => {
  // A future Node.js where the TCP handle ignores the read buffer it is
  // given: every check of what exists still passes, and reads would come
  // from a stale buffer.
  const dir = await mkdtemp(path.join(os.tmpdir(), 'pgbudget-selftest-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const patch = path.join(dir, 'patch.mjs');
  await writeFile(patch, "process.binding('tcp_wrap').TCP.prototype.useUserBuffer = function () {};\n");
  // The fast path even when the suite runs with PGBUDGET_IO=portable: it is what is under test.
  const { child, exited, port, output } = await startBare(t, ['--import', patch], { PGBUDGET_IO: '' });
  const warnings = output().split('\n').filter((l) => l.includes('self-test'));
  t.equal(warnings.length, 1, 'one log line');
  t.match(JSON.parse(warnings[0]), { level: 40, problem: /came back changed/ }, 'a warning that says what was wrong');
  const url = `postgres://app@127.0.0.1:${port}/postgres`;
  const r = await psql(url, "select md5(string_agg(g::text, ',')) from generate_series(1, 200000) g");
  const direct = await psql(`postgres://app@127.0.0.1:${cluster.port}/postgres`, "select md5(string_agg(g::text, ',')) from generate_series(1, 200000) g");
  t.equal(r.stdout, direct.stdout, r.stderr);
  const big = await psql(url, "select length(string_agg(repeat('x', 1000), '')) from generate_series(1, 3000)");
  t.equal(big.stdout.trim(), '3000000', big.stderr);
  const rows = await psql(url, 'select g from generate_series(1, 50000) g');
  t.equal(rows.stdout.trim().split('\n').length, 50000, 'a 50,000-row result arrives whole');
  child.kill('SIGTERM');
  t.equal(await exited, 0);
});
