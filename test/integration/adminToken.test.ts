// The admin server's bearer token, over real HTTP against a real proxy: no
// token, every route open; with one, every route but the probes (and
// /metrics, unless metricsNeedToken) answers 401 without it; a token file
// is read again on SIGHUP, and one that cannot be read stops the start or
// keeps the running config. The token never reaches a log line.
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import t, { type Test } from 'tap';
import { stringify } from 'yaml';
import { validateConfig } from '../../src/config/schema.js';
import { withCluster } from '../helpers/cluster.js';
import { proxyConfig, repoRoot, run, spawnProxy, startProxy } from '../helpers/proxy.js';

const cluster = await withCluster(t, { maxConnections: 20 });
const services = [{ name: 'app', budget: 1 }];
const cli = path.join(repoRoot, 'dist', 'cli.js');

interface Answer {
  status: number;
  wwwAuthenticate: string | null;
  body: string;
}

async function get(port: number, pathname: string, authorization?: string): Promise<Answer> {
  const res = await fetch(`http://127.0.0.1:${port}${pathname}`, { headers: authorization ? { authorization } : {} });
  return { status: res.status, wwwAuthenticate: res.headers.get('www-authenticate'), body: await res.text() };
}

const newToken = () => randomBytes(24).toString('base64url');

/** A directory removed at teardown. */
async function tempDir(t: Test): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'pgbudget-admin-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** An environment variable set for one test. */
function setEnv(t: Test, name: string, value: string): void {
  process.env[name] = value;
  t.teardown(() => {
    delete process.env[name];
  });
}

async function assertStatusNeedsToken(t: Test, port: number, token: string): Promise<void> {
  const none = await get(port, '/status');
  t.equal(none.status, 401, '/status without a token');
  t.equal(none.wwwAuthenticate, 'Bearer realm="pgbudget"');
  t.same(JSON.parse(none.body), { error: 'a bearer token is required (Authorization: Bearer <token>)' });
  const wrong = await get(port, '/status', `Bearer ${newToken()}`);
  t.equal(wrong.status, 401, 'a wrong token');
  t.equal(wrong.wwwAuthenticate, 'Bearer realm="pgbudget"');
  t.same(JSON.parse(wrong.body), { error: 'wrong bearer token' });
  t.equal((await get(port, '/status', `Bearer ${token}x`)).status, 401, 'the token and more');
  t.equal((await get(port, '/status', `Bearer ${token.slice(0, -1)}`)).status, 401, 'a prefix of the token');
  t.equal((await get(port, '/status', `Basic ${Buffer.from(`u:${token}`).toString('base64')}`)).status, 401, 'another scheme');
  const right = await get(port, '/status', `Bearer ${token}`);
  t.equal(right.status, 200, 'the right token');
  t.equal(JSON.parse(right.body).services[0].name, 'app');
  t.equal((await get(port, '/status', `bearer ${token}`)).status, 200, 'the scheme is case-insensitive');
}

t.test('no token configured: every route is open', async (t) => {
  const proxy = await startProxy(t, cluster, { services });
  const port = proxy.adminAddress.port;
  for (const route of ['/status', '/metrics', '/healthz', '/readyz']) t.equal((await get(port, route)).status, 200, route);
  t.equal((await get(port, '/nope')).status, 404, 'an unknown route is a plain 404');
});

t.test('tokenEnv: /status wants the token; the probes and /metrics do not', async (t) => {
  const token = newToken();
  setEnv(t, 'PGBUDGET_TEST_ADMIN_TOKEN', token);
  const proxy = await startProxy(t, cluster, { admin: { listen: '127.0.0.1:0', tokenEnv: 'PGBUDGET_TEST_ADMIN_TOKEN' }, services });
  const port = proxy.adminAddress.port;
  await assertStatusNeedsToken(t, port, token);
  t.equal((await get(port, '/healthz')).status, 200, '/healthz is open');
  t.equal((await get(port, '/readyz')).status, 200, '/readyz is open');
  t.equal((await get(port, '/readyz', 'Bearer wrong')).status, 200, '/readyz is open whatever is sent');
  const metrics = await get(port, '/metrics');
  t.equal(metrics.status, 200, '/metrics is open by default');
  t.match(metrics.body, /pgbudget_/);
  t.equal((await get(port, '/nope')).status, 401, 'an unknown route wants the token too: nothing is said of which routes exist');
  t.equal((await get(port, '/nope', `Bearer ${token}`)).status, 404);
});

t.test('metricsNeedToken: /metrics wants the token too', async (t) => {
  const token = newToken();
  setEnv(t, 'PGBUDGET_TEST_ADMIN_TOKEN', token);
  const proxy = await startProxy(t, cluster, {
    admin: { listen: '127.0.0.1:0', tokenEnv: 'PGBUDGET_TEST_ADMIN_TOKEN', metricsNeedToken: true },
    services,
  });
  const port = proxy.adminAddress.port;
  const none = await get(port, '/metrics');
  t.equal(none.status, 401);
  t.equal(none.wwwAuthenticate, 'Bearer realm="pgbudget"');
  t.equal((await get(port, '/metrics', `Bearer ${newToken()}`)).status, 401);
  const right = await get(port, '/metrics', `Bearer ${token}`);
  t.equal(right.status, 200);
  t.match(right.body, /pgbudget_/);
  t.equal((await get(port, '/healthz')).status, 200, '/healthz stays open');
  t.equal((await get(port, '/readyz')).status, 200, '/readyz stays open');
});

t.test('a reload reads the token again; one that cannot be read keeps the running config', async (t) => {
  const first = newToken();
  const second = newToken();
  setEnv(t, 'PGBUDGET_TEST_ADMIN_TOKEN', first);
  const withToken = { admin: { listen: '127.0.0.1:0', tokenEnv: 'PGBUDGET_TEST_ADMIN_TOKEN' }, services };
  const proxy = await startProxy(t, cluster, withToken);
  const port = proxy.adminAddress.port;
  t.equal((await get(port, '/status', `Bearer ${first}`)).status, 200);

  process.env.PGBUDGET_TEST_ADMIN_TOKEN = second;
  proxy.reload(validateConfig(proxyConfig(cluster, withToken)));
  t.equal((await get(port, '/status', `Bearer ${first}`)).status, 401, 'the old token no longer works');
  t.equal((await get(port, '/status', `Bearer ${second}`)).status, 200, 'the new one does');

  const unset = { admin: { listen: '127.0.0.1:0', tokenEnv: 'PGBUDGET_TEST_ADMIN_TOKEN_UNSET' }, services: [{ name: 'app', budget: 2 }] };
  t.throws(() => proxy.reload(validateConfig(proxyConfig(cluster, unset))), {
    message: 'reload failed, running config kept: admin.tokenEnv: the environment variable PGBUDGET_TEST_ADMIN_TOKEN_UNSET is not set',
  });
  t.equal((await get(port, '/status', `Bearer ${second}`)).status, 200, 'the running token is kept');
  t.equal(proxy.proxy.snapshot().services[0].budget, 1, "and the proxy's config with it");

  proxy.reload(validateConfig(proxyConfig(cluster, { services })));
  t.equal((await get(port, '/status')).status, 200, 'a config without a token opens every route again');
});

t.test('an unset tokenEnv stops the start, naming the variable', async (t) => {
  await t.rejects(
    startProxy(t, cluster, { admin: { listen: '127.0.0.1:0', tokenEnv: 'PGBUDGET_TEST_ADMIN_TOKEN_UNSET' }, services }),
    { message: 'admin.tokenEnv: the environment variable PGBUDGET_TEST_ADMIN_TOKEN_UNSET is not set' },
  );
});

t.test('the CLI: tokenFile, read again on SIGHUP; --admin keeps the token; no token in any log line', async (t) => {
  const dir = await tempDir(t);
  const tokenFile = path.join(dir, 'token');
  const first = newToken();
  const second = newToken();
  await writeFile(tokenFile, `${first}\n`);
  const raw = { admin: { listen: '127.0.0.1:9', tokenFile }, services };
  // --admin overrides the address alone: the token stays.
  const p = await spawnProxy(t, cluster, raw, ['--admin', '127.0.0.1:0']);
  await assertStatusNeedsToken(t, p.adminPort, first);
  t.equal((await get(p.adminPort, '/metrics')).status, 200, '/metrics is open by default');

  await writeFile(tokenFile, `${second}\r\n`);
  p.proc.kill('SIGHUP');
  await p.waitForLog(/config reloaded/);
  t.equal((await get(p.adminPort, '/status', `Bearer ${first}`)).status, 401, 'the old token no longer works');
  t.equal((await get(p.adminPort, '/status', `Bearer ${second}`)).status, 200, 'the new one does');

  await rm(tokenFile);
  p.proc.kill('SIGHUP');
  const rejected = await p.waitForLog(/config reload rejected/);
  t.match(rejected, `admin.tokenFile: cannot read ${tokenFile}: ENOENT`);
  t.equal((await get(p.adminPort, '/status', `Bearer ${second}`)).status, 200, 'the running token is kept');

  await writeFile(tokenFile, '\n');
  p.proc.kill('SIGHUP');
  t.match(await p.waitForLog(/is empty/), `config reload rejected`, 'an empty file is no token');
  t.equal((await get(p.adminPort, '/status', `Bearer ${second}`)).status, 200);

  t.notOk(
    p.logs.some((l) => l.includes(first) || l.includes(second)),
    'no log line holds a token',
  );
  p.proc.kill('SIGTERM');
  t.equal(await p.exited, 0);
});

t.test('the CLI: a token file that cannot be read, or is empty, stops the start naming the file', async (t) => {
  const dir = await tempDir(t);
  const configPath = path.join(dir, 'pgbudget.yaml');
  for (const [tokenFile, what] of [
    [path.join(dir, 'missing'), 'cannot read .*missing: ENOENT'],
    [path.join(dir, 'empty'), 'empty is empty'],
  ]) {
    await writeFile(path.join(dir, 'empty'), '');
    await writeFile(configPath, stringify(proxyConfig(cluster, { logLevel: 'info', admin: { listen: '127.0.0.1:0', tokenFile }, services })));
    const r = await run(process.execPath, [cli, '--config', configPath]);
    t.equal(r.code, 1, tokenFile);
    t.match(r.stderr, new RegExp(`^pgbudget: cannot start: admin\\.tokenFile: .*${what}`, 'm'));
    t.notMatch(r.stdout, /pgbudget ready/);
  }
});

t.test('the CLI: an admin server others can reach without a token is said at start', async (t) => {
  const p = await spawnProxy(t, cluster, { admin: '0.0.0.0:0', services });
  t.match(await p.waitForLog(/without a token/), /admin on 0\.0\.0\.0 without a token/);
  t.equal((await get(p.adminPort, '/status')).status, 200, 'the string form: open, as before');
  p.proc.kill('SIGTERM');
  t.equal(await p.exited, 0);
});
