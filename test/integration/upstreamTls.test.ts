// TLS towards the server, against a throwaway cluster with ssl=on and a CA
// the test makes with openssl: every upstream.tls mode, what each refuses
// (a wrong CA, a name that does not match, a server without TLS), data
// that streams through TLS in both directions, and a reload that switches
// the CA without dropping the clients already connected.
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import pg from 'pg';
import { validateConfig } from '../../src/config/schema.js';
import { withCluster } from '../helpers/cluster.js';
import { assertNoLeaks, proxyConfig, startProxy } from '../helpers/proxy.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'pgbudget-uptls-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
// The cluster runs as postgres: it must reach its certificate and own its key.
chmodSync(dir, 0o755);
const file = (name: string) => path.join(dir, name);
const openssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
const makeCa = (name: string) =>
  openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.pem`, '-subj', `/CN=${name}`, '-days', '2');
function makeCert(name: string, ca: string, san: string): void {
  openssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`);
  writeFileSync(file(`${name}.ext`), `subjectAltName=${san}\n`);
  openssl('x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.pem`, '-CAkey', `${ca}.key`, '-CAcreateserial', '-out', `${name}.pem`, '-days', '2', '-extfile', file(`${name}.ext`));
  chmodSync(file(`${name}.key`), 0o600);
  execFileSync('chown', ['postgres', file(`${name}.key`), file(`${name}.pem`)]);
}
makeCa('ca');
makeCa('otherca');
makeCert('server', 'ca', 'IP:127.0.0.1,DNS:localhost');
makeCert('elsewhere', 'ca', 'DNS:db.example.com');

const sslConf = (cert: string) => ({ ssl: 'on', ssl_cert_file: file(`${cert}.pem`), ssl_key_file: file(`${cert}.key`) });
const cluster = await withCluster(t, { maxConnections: 20, extraConf: sslConf('server') });
const misnamed = await withCluster(t, { maxConnections: 10, extraConf: sslConf('elsewhere') });
const plain = await withCluster(t, { maxConnections: 10 });

const services = [{ name: 'app', budget: 3, poolMode: 'transaction', queue: { timeoutMs: 5000 } }];
const ON_TLS = 'select ssl, version from pg_stat_ssl where pid = pg_backend_pid()';

async function query<T = Record<string, unknown>>(url: string, sql: string): Promise<T[]> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query(sql)).rows as T[];
  } finally {
    await c.end();
  }
}

/** The error a client gets connecting through the proxy, with how long it took. */
async function refusal(url: string): Promise<{ code?: string; message: string; detail?: string; ms: number }> {
  const started = Date.now();
  try {
    await query(url, 'select 1');
  } catch (err) {
    const e = err as { code?: string; message: string; detail?: string };
    return { code: e.code, message: e.message, detail: e.detail, ms: Date.now() - started };
  }
  throw new Error('connected, but a refusal was expected');
}

t.test('verify-full against the CA: server connections are TLS, the pool works and streams', async (t) => {
  const proxy = await startProxy(t, cluster, { services, upstream: { tls: { mode: 'verify-full', ca: file('ca.pem') } } });
  const [row] = await query<{ ssl: boolean; version: string }>(proxy.url(), ON_TLS);
  t.equal(row.ssl, true, 'the server sees a TLS connection');
  t.match(row.version, /^TLSv1\.[23]$/);
  // Several clients at once in transaction mode: a pool of TLS connections, each carrying large rows both ways.
  const big = 'x'.repeat(300_000);
  const clients = await Promise.all(
    Array.from({ length: 6 }, async () => {
      const c = new pg.Client({ connectionString: proxy.url() });
      await c.connect();
      return c;
    }),
  );
  for (let round = 0; round < 3; round++) {
    const rows = await Promise.all(clients.map((c, i) => c.query('select length($1::text) as n, repeat($2, 200000) as r', [big + i, 'y'])));
    rows.forEach((r, i) => {
      t.equal(Number(r.rows[0].n), big.length + String(i).length, 'what the client sent arrived whole');
      t.equal(r.rows[0].r.length, 200_000, 'what the server sent arrived whole');
    });
  }
  await Promise.all(clients.map((c) => c.end()));
  const snap = proxy.proxy.snapshot().services.find((s) => s.name === 'app')!;
  t.ok(snap.serverConnections.idle >= 2 && snap.serverConnections.idle <= 3, `a pool of TLS server connections (${JSON.stringify(snap.serverConnections)})`);
  await assertNoLeaks(t, proxy);
});

t.test('prefer (the default) uses TLS when the server has it, plain when it does not', async (t) => {
  t.equal(validateConfig(proxyConfig(cluster, { services })).upstream.tls.mode, 'prefer');
  const withTls = await startProxy(t, cluster, { services });
  t.equal((await query<{ ssl: boolean }>(withTls.url(), ON_TLS))[0].ssl, true, 'TLS to a server with ssl=on');
  const withoutTls = await startProxy(t, plain, { services });
  t.same(await query(withoutTls.url(), 'select ssl from pg_stat_ssl where pid = pg_backend_pid()'), [{ ssl: false }], 'plain to a server without it');
});

t.test('require: TLS without checking the certificate; refused by a server without TLS', async (t) => {
  const proxy = await startProxy(t, misnamed, { services, upstream: { tls: { mode: 'require' } } });
  t.equal((await query<{ ssl: boolean }>(proxy.url(), ON_TLS))[0].ssl, true);
  const toPlain = await startProxy(t, plain, { services, upstream: { tls: { mode: 'require' } } });
  const r = await refusal(toPlain.url());
  t.equal(r.code, '08001');
  t.equal(r.message, 'pgbudget: server does not support SSL, but SSL was required');
  t.equal(r.detail, 'upstream.tls.mode is "require"');
  t.ok(r.ms < 3000, `refused at once, not after the queue timeout (${r.ms} ms)`);
  await assertNoLeaks(t, toPlain);
});

t.test('verify-ca checks the chain only; verify-full also the name', async (t) => {
  const ca = await startProxy(t, misnamed, { services, upstream: { tls: { mode: 'verify-ca', ca: file('ca.pem') } } });
  t.equal((await query<{ ssl: boolean }>(ca.url(), ON_TLS))[0].ssl, true, 'a certificate for db.example.com passes verify-ca');
  const full = await startProxy(t, misnamed, { services, upstream: { tls: { mode: 'verify-full', ca: file('ca.pem') } } });
  const r = await refusal(full.url());
  t.equal(r.code, '08001');
  t.match(r.message, /^pgbudget: TLS to the server failed: .*(IP: 127\.0\.0\.1 is not in the cert's list|does not match)/);
  t.ok(r.ms < 3000, `refused at once (${r.ms} ms)`);
  // The proxy stays up for everyone else.
  t.equal((await query<{ ssl: boolean }>(ca.url(), ON_TLS))[0].ssl, true);
  await assertNoLeaks(t, full);
});

t.test('a certificate another CA signed is refused; a reload to the right CA lets new connections in, old ones stay', async (t) => {
  const confFile = file('proxy-ca.pem');
  writeFileSync(confFile, execFileSync('cat', [file('otherca.pem')]));
  const raw = { services: [{ ...services[0], poolMode: 'session' }], upstream: { tls: { mode: 'verify-full', ca: confFile } } };
  const proxy = await startProxy(t, cluster, raw);
  const r = await refusal(proxy.url());
  t.equal(r.code, '08001');
  t.match(r.message, /^pgbudget: TLS to the server failed: (self[- ]signed certificate in certificate chain|unable to verify the first certificate|unable to get local issuer certificate)/);
  writeFileSync(confFile, execFileSync('cat', [file('ca.pem')]));
  proxy.proxy.reload(validateConfig(proxyConfig(cluster, raw)));
  const held = new pg.Client({ connectionString: proxy.url() });
  await held.connect();
  t.equal((await held.query(ON_TLS)).rows[0].ssl, true, 'the reloaded CA verifies the server');
  // A CA file that cannot be read keeps the running config, and the session stays up.
  rmSync(confFile);
  t.throws(() => proxy.proxy.reload(validateConfig(proxyConfig(cluster, raw))), /reload failed, running config kept: upstream\.tls\.ca: cannot read/);
  t.equal((await held.query('select 7 as n')).rows[0].n, 7, 'the connected session is untouched');
  t.equal((await query<{ ssl: boolean }>(proxy.url(), ON_TLS))[0].ssl, true, 'new connections still use the CA read last');
  await held.end();
  await assertNoLeaks(t, proxy);
});

t.test('config: a client certificate needs its key', async (t) => {
  t.throws(() => validateConfig(proxyConfig(cluster, { services, upstream: { tls: { mode: 'require', cert: file('server.pem') } } })), /upstream\.tls\.key: must be set with upstream\.tls\.cert/);
  t.throws(() => validateConfig(proxyConfig(cluster, { services, upstream: { tls: { mode: 'sometimes' } } })), /upstream\.tls\.mode/);
});
