// TLS towards clients, with a CA, server and client certificates the test
// makes with openssl: psql with sslmode=verify-full, node-postgres and
// postgres.js verifying the proxy's certificate, SCRAM over TLS, tls.mode
// require and verify-client, bytes sent before the TLS handshake refused,
// and a certificate replaced by a reload while a TLS client stays connected.
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import pg from 'pg';
import postgres from 'postgres';
import { validateConfig } from '../../src/config/schema.js';
import { withCluster } from '../helpers/cluster.js';
import { assertNoLeaks, proxyConfig, run, startProxy } from '../helpers/proxy.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'pgbudget-tls-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const file = (name: string) => path.join(dir, name);
const openssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });

/** A CA, and a certificate it signs for `cn` (with `san` as subjectAltName when given). */
function makeCa(name: string): void {
  openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.pem`, '-subj', `/CN=${name}`, '-days', '2');
}
function makeCert(name: string, ca: string, cn: string, san?: string): void {
  openssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`);
  const ext = file(`${name}.ext`);
  writeFileSync(ext, san ? `subjectAltName=${san}\n` : 'basicConstraints=CA:FALSE\n');
  openssl('x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.pem`, '-CAkey', `${ca}.key`, '-CAcreateserial', '-out', `${name}.pem`, '-days', '2', '-extfile', ext);
  chmodSync(file(`${name}.key`), 0o600); // libpq refuses a key others can read
}
makeCa('ca');
makeCert('server', 'ca', 'localhost', 'DNS:localhost,IP:127.0.0.1');
makeCert('client', 'ca', 'app_u');
makeCa('ca2');
makeCert('server2', 'ca2', 'localhost', 'DNS:localhost,IP:127.0.0.1');
makeCert('stranger', 'ca2', 'app_u'); // the right name, signed by a CA the proxy does not trust

const cluster = await withCluster(t, { maxConnections: 20, passwordUsers: [{ name: 'app_u', password: 'app-pw', method: 'scram-sha-256' }] });
const services = [{ name: 'app', match: { user: 'app_u' }, budget: 2, poolMode: 'transaction' }];
const auth = { method: 'scram-sha-256', users: [{ name: 'app_u', password: 'app-pw' }] };
const tlsFiles = { cert: file('server.pem'), key: file('server.key'), ca: file('ca.pem') };
const proxy = await startProxy(t, cluster, { auth, tls: tlsFiles, services });

/** libpq's connection string: verify-full against `ca`, connecting to 127.0.0.1 under the name localhost. */
const conninfo = (port: number, extra = '', ca = 'ca.pem') =>
  `host=localhost hostaddr=127.0.0.1 port=${port} dbname=postgres user=app_u sslmode=verify-full sslrootcert=${file(ca)} ${extra}`;

t.test('psql with sslmode=verify-full: TLS to the proxy, SCRAM inside it', async (t) => {
  const r = await run('psql', ['-X', '-A', '-t', '-d', conninfo(proxy.port), '-c', 'select current_user', '-c', '\\conninfo'], { env: { PGPASSWORD: 'app-pw' } });
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /^app_u$/m, 'authenticated with SCRAM over TLS');
  t.match(r.stdout, /SSL connection \(protocol: TLSv1\.[23]/, 'psql reports a TLS connection');
  const bound = await run('psql', ['-X', '-A', '-t', '-d', conninfo(proxy.port, 'channel_binding=require'), '-c', 'select 5'], { env: { PGPASSWORD: 'app-pw' } });
  t.equal(bound.stdout.trim(), '5', `channel_binding=require: SCRAM-SHA-256-PLUS over TLS (${bound.stderr.trim()})`);
  const wrongCa = await run('psql', ['-X', '-d', conninfo(proxy.port, '', 'ca2.pem'), '-c', 'select 1'], { env: { PGPASSWORD: 'app-pw' } });
  t.not(wrongCa.code, 0, 'a client that trusts another CA refuses the proxy');
  t.match(wrongCa.stderr, /certificate verify failed/);
  const plain = await run('psql', ['-X', '-A', '-t', '-d', `${conninfo(proxy.port).replace('sslmode=verify-full', 'sslmode=disable')}`, '-c', 'select 1'], { env: { PGPASSWORD: 'app-pw' } });
  t.equal(plain.stdout.trim(), '1', 'tls.mode allow: a plain client still gets in');
});

t.test('node-postgres and postgres.js verify the certificate and run queries over TLS', async (t) => {
  const ca = readFileSync(file('ca.pem'), 'utf8');
  const c = new pg.Client({ host: '127.0.0.1', port: proxy.port, user: 'app_u', password: 'app-pw', database: 'postgres', ssl: { ca, servername: 'localhost' } });
  await c.connect();
  t.same((await c.query('select $1::text as v', ['over tls'])).rows, [{ v: 'over tls' }], 'node-postgres');
  await c.end();
  const sql = postgres({ host: '127.0.0.1', port: proxy.port, user: 'app_u', password: 'app-pw', database: 'postgres', ssl: { ca, servername: 'localhost' }, max: 1 });
  t.same([...(await sql`select ${'pjs'}::text as v`)], [{ v: 'pjs' }], 'postgres.js');
  await sql.end();
  await assertNoLeaks(t, proxy);
});

t.test('tls.mode require refuses plain clients with 28000; verify-client wants a certificate the CA signed', async (t) => {
  const required = await startProxy(t, cluster, { auth, tls: { ...tlsFiles, mode: 'require' }, services });
  const plain = await run('psql', ['-X', '-d', conninfo(required.port).replace('sslmode=verify-full', 'sslmode=disable'), '-c', 'select 1'], { env: { PGPASSWORD: 'app-pw' } });
  t.match(plain.stderr, 'FATAL:  pgbudget: TLS is required (connect with sslmode=require or stronger)');
  const ok = await run('psql', ['-X', '-A', '-t', '-d', conninfo(required.port), '-c', 'select 2'], { env: { PGPASSWORD: 'app-pw' } });
  t.equal(ok.stdout.trim(), '2', 'with TLS: in');

  const verify = await startProxy(t, cluster, { auth, tls: { ...tlsFiles, mode: 'verify-client' }, services });
  const noCert = await run('psql', ['-X', '-d', conninfo(verify.port), '-c', 'select 1'], { env: { PGPASSWORD: 'app-pw' } });
  t.not(noCert.code, 0, 'no client certificate: the TLS handshake fails');
  const withCert = await run('psql', ['-X', '-A', '-t', '-d', conninfo(verify.port, `sslcert=${file('client.pem')} sslkey=${file('client.key')}`), '-c', 'select 3'], {
    env: { PGPASSWORD: 'app-pw' },
  });
  t.equal(withCert.stdout.trim(), '3', withCert.stderr);
  const stranger = await run('psql', ['-X', '-d', conninfo(verify.port, `sslcert=${file('stranger.pem')} sslkey=${file('stranger.key')}`), '-c', 'select 1'], {
    env: { PGPASSWORD: 'app-pw' },
  });
  t.not(stranger.code, 0, 'a certificate another CA signed is refused');
  t.match(stranger.stderr, /FATAL:  pgbudget: client certificate rejected: [A-Z_]+/);
});

t.test('bytes sent after the SSLRequest, before the TLS handshake, are refused (08P01)', async (t) => {
  const s = net.connect({ host: '127.0.0.1', port: proxy.port });
  await new Promise((r) => s.once('connect', r));
  const request = Buffer.from([0, 0, 0, 8, 4, 210, 22, 47]);
  let got = Buffer.alloc(0);
  s.on('data', (d) => (got = Buffer.concat([got, d])));
  const closed = new Promise((r) => s.on('close', r));
  s.write(Buffer.concat([request, Buffer.from('injected')]));
  await closed;
  t.match(got.toString('latin1'), /C08P01\0.*received unencrypted data after SSL request/s);
});

t.test('a reload replaces the certificate: new clients get the new one, a TLS client already in stays', async (t) => {
  const reloaded = await startProxy(t, cluster, { auth, tls: tlsFiles, services });
  const ca = readFileSync(file('ca.pem'), 'utf8');
  const before = new pg.Client({ host: '127.0.0.1', port: reloaded.port, user: 'app_u', password: 'app-pw', database: 'postgres', ssl: { ca, servername: 'localhost' } });
  await before.connect();
  reloaded.proxy.reload(
    validateConfig(proxyConfig(cluster, { auth, tls: { cert: file('server2.pem'), key: file('server2.key') }, services })),
  );
  t.same((await before.query('select 1 as n')).rows, [{ n: 1 }], 'the client connected before the reload goes on');
  const old = await run('psql', ['-X', '-d', conninfo(reloaded.port), '-c', 'select 1'], { env: { PGPASSWORD: 'app-pw' } });
  t.match(old.stderr, /certificate verify failed/, 'the old CA no longer verifies new connections');
  const fresh = await run('psql', ['-X', '-A', '-t', '-d', conninfo(reloaded.port, '', 'ca2.pem'), '-c', 'select 4'], { env: { PGPASSWORD: 'app-pw' } });
  t.equal(fresh.stdout.trim(), '4', 'the new certificate serves new connections');
  t.throws(
    () => reloaded.proxy.reload(validateConfig(proxyConfig(cluster, { auth, tls: { cert: file('missing.pem'), key: file('server2.key') }, services }))),
    /reload failed, running config kept: tls\.cert: cannot read .*missing\.pem: ENOENT/,
  );
  await before.end();
});

t.test('auth.method password goes over TLS only; cert takes a verified client certificate whose CN is the user', async (t) => {
  const pw = await startProxy(t, cluster, { auth: { ...auth, method: 'password' }, tls: tlsFiles, services });
  const ok = await run('psql', ['-X', '-A', '-t', '-d', conninfo(pw.port), '-c', 'select current_user'], { env: { PGPASSWORD: 'app-pw' } });
  t.equal(ok.stdout.trim(), 'app_u', 'the password in clear, inside TLS');
  const wrong = await run('psql', ['-X', '-d', conninfo(pw.port), '-c', 'select 1'], { env: { PGPASSWORD: 'nope' } });
  t.match(wrong.stderr, 'FATAL:  password authentication failed for user "app_u"');
  const plain = await run('psql', ['-X', '-d', conninfo(pw.port).replace('sslmode=verify-full', 'sslmode=disable'), '-c', 'select 1'], { env: { PGPASSWORD: 'app-pw' } });
  t.match(plain.stderr, 'FATAL:  pgbudget: TLS is required', 'never in clear over a plain connection');

  const everyone = [{ name: 'all', match: {}, budget: 2, poolMode: 'transaction', password: 'app-pw' }];
  const cert = await startProxy(t, cluster, { auth: { method: 'cert' }, tls: { ...tlsFiles, mode: 'verify-client' }, services: everyone });
  const withCert = `sslcert=${file('client.pem')} sslkey=${file('client.key')}`;
  const me = await run('psql', ['-X', '-A', '-t', '-d', conninfo(cert.port, withCert), '-c', 'select current_user'], { env: { PGPASSWORD: '' } });
  t.equal(me.stdout.trim(), 'app_u', `the certificate's CN is the user: in, no password (${me.stderr.trim()})`);
  const other = await run('psql', ['-X', '-d', conninfo(cert.port, withCert).replace('user=app_u', 'user=postgres'), '-c', 'select 1'], { env: { PGPASSWORD: '' } });
  t.match(other.stderr, 'FATAL:  certificate authentication failed for user "postgres"');
  const stranger = `sslcert=${file('stranger.pem')} sslkey=${file('stranger.key')}`;
  const forged = await run('psql', ['-X', '-d', conninfo(cert.port, stranger), '-c', 'select 1'], { env: { PGPASSWORD: '' } });
  t.not(forged.code, 0, "the user's name on a certificate the CA did not sign gets nobody in");
});
