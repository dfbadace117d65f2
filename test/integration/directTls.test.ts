// Direct TLS (PostgreSQL 17's sslnegotiation=direct): the client starts its
// TLS handshake at once, no SSLRequest, and must offer ALPN "postgresql".
// Real clients that do it (node-postgres and postgres.js with
// sslnegotiation=direct, openssl s_client -alpn postgresql), SCRAM and
// SCRAM-SHA-256-PLUS inside, tls.mode require and the cert method; a first
// read of one byte; refusals (no ALPN, another ALPN, TLS not configured,
// TLS inside TLS) that end that client only.
import { readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import t, { type Test } from 'tap';
import pg from 'pg';
import postgres from 'postgres';
import { makeCertDir } from '../helpers/certs.js';
import { withCluster } from '../helpers/cluster.js';
import { assertNoLeaks, errorFields, run, startProxy, type TestProxy } from '../helpers/proxy.js';
import { startupPacket } from '../helpers/wire.js';

const { file, makeCa, makeCert } = makeCertDir(t, 'pgbudget-direct-tls-');
makeCa('ca');
makeCert('server', 'ca', 'localhost', 'DNS:localhost,IP:127.0.0.1');
makeCert('client', 'ca', 'app_u');

const cluster = await withCluster(t, { maxConnections: 20, passwordUsers: [{ name: 'app_u', password: 'app-pw', method: 'scram-sha-256' }] });
const services = [{ name: 'app', match: { user: 'app_u' }, budget: 2, poolMode: 'transaction' }];
const auth = { method: 'scram-sha-256', users: [{ name: 'app_u', password: 'app-pw' }] };
const tlsFiles = { cert: file('server.pem'), key: file('server.key'), ca: file('ca.pem') };
const proxy = await startProxy(t, cluster, { auth, tls: tlsFiles, services });
const ca = readFileSync(file('ca.pem'), 'utf8');

/** node-postgres with sslnegotiation=direct, verifying the proxy's certificate under the name localhost. */
function directPg(port: number, extra: { ssl?: tls.ConnectionOptions; user?: string; password?: string; enableChannelBinding?: boolean } = {}): pg.Client {
  const { ssl, ...rest } = extra;
  return new pg.Client({
    host: '127.0.0.1',
    port,
    user: 'app_u',
    password: 'app-pw',
    database: 'postgres',
    ssl: { ca, servername: 'localhost', ...ssl },
    sslnegotiation: 'direct',
    ...rest,
  });
}

/** One query through a fresh node-postgres client (plain, SSLRequest-less): the proxy still serves. */
async function stillServes(t: Test, p: TestProxy): Promise<void> {
  const c = new pg.Client({ host: '127.0.0.1', port: p.port, user: 'app_u', password: 'app-pw', database: 'postgres', ssl: { ca, servername: 'localhost' } });
  await c.connect();
  t.same((await c.query('select 1 as n')).rows, [{ n: 1 }], 'the proxy serves the next client');
  await c.end();
}

/** A raw TLS connection to `port`, started at once (direct); resolves once the handshake is done or failed. */
function directTls(port: number, options: tls.ConnectionOptions = {}) {
  const socket = tls.connect({ host: '127.0.0.1', port, ca, servername: 'localhost', ...options });
  const chunks: Buffer[] = [];
  socket.on('data', (d: Buffer) => chunks.push(d));
  let error: Error | null = null;
  socket.on('error', (err) => (error = err));
  const closed = new Promise<void>((r) => socket.on('close', () => r()));
  const secured = new Promise<boolean>((r) => {
    socket.once('secureConnect', () => r(true));
    socket.once('close', () => r(false));
  });
  return { socket, secured, closed, received: () => Buffer.concat(chunks), error: () => error };
}

/** The unmatched rejections counted (before a startup packet names a service). */
const unmatchedViolations = (p: TestProxy) => p.proxy.snapshot().unmatched.rejections.protocol_violation ?? 0;

t.test('node-postgres and postgres.js with sslnegotiation=direct: TLS at once, SCRAM inside', async (t) => {
  const c = directPg(proxy.port);
  await c.connect();
  t.same((await c.query('select $1::text as v', ['direct'])).rows, [{ v: 'direct' }], 'node-postgres');
  const stream = (c as unknown as { connection: { stream: tls.TLSSocket } }).connection.stream;
  t.equal(stream.alpnProtocol, 'postgresql', 'ALPN postgresql settled');
  await c.end();

  const bound = directPg(proxy.port, { enableChannelBinding: true });
  await bound.connect();
  t.same((await bound.query('select 2 as n')).rows, [{ n: 2 }], 'SCRAM-SHA-256-PLUS (channel binding) over direct TLS');
  await bound.end();

  const wrong = directPg(proxy.port, { password: 'nope' });
  await t.rejects(wrong.connect(), /password authentication failed for user "app_u"/, 'a wrong password is refused as ever');

  const sql = postgres({ host: '127.0.0.1', port: proxy.port, user: 'app_u', password: 'app-pw', database: 'postgres', ssl: { ca, servername: 'localhost' }, max: 1, ...({ sslnegotiation: 'direct' } as object) });
  t.same([...(await sql`select ${'pjs'}::text as v`)], [{ v: 'pjs' }], 'postgres.js');
  await sql.end();
  await assertNoLeaks(t, proxy);
});

t.test('openssl s_client -alpn postgresql: TLS with ALPN "postgresql", the certificate verified', async (t) => {
  const r = await run('sh', ['-c', `openssl s_client -connect 127.0.0.1:${proxy.port} -servername localhost -CAfile ${file('ca.pem')} -alpn postgresql </dev/null`]);
  t.match(r.stdout, /ALPN protocol: postgresql/, r.stderr);
  t.match(r.stdout, /Verify return code: 0 \(ok\)/);
});

t.test('direct TLS without ALPN "postgresql" is refused; the proxy stays up', async (t) => {
  const before = unmatchedViolations(proxy);
  // No ALPN: the handshake completes (TLS has no way to say why), then the proxy closes without a word.
  const none = directTls(proxy.port);
  t.ok(await none.secured, 'no ALPN: the TLS handshake completes');
  none.socket.write(startupPacket({ user: 'app_u', database: 'postgres' }));
  await none.closed;
  t.equal(none.received().length, 0, 'then closed, nothing said');
  t.equal(unmatchedViolations(proxy), before + 1, 'counted as a protocol violation');

  // Another protocol only: the handshake fails with a no_application_protocol alert.
  const http = directTls(proxy.port, { ALPNProtocols: ['http/1.1'] });
  t.notOk(await http.secured, 'ALPN http/1.1: no TLS');
  t.match((http.error() as NodeJS.ErrnoException | null)?.code, /ALERT_NO_APPLICATION_PROTOCOL/, 'a no_application_protocol alert');

  const sNone = await run('sh', ['-c', `openssl s_client -connect 127.0.0.1:${proxy.port} -servername localhost -CAfile ${file('ca.pem')} </dev/null`]);
  t.match(sNone.stdout, /No ALPN negotiated/, 's_client without -alpn: no ALPN');
  const sHttp = await run('sh', ['-c', `openssl s_client -connect 127.0.0.1:${proxy.port} -servername localhost -CAfile ${file('ca.pem')} -alpn http/1.1 </dev/null`]);
  t.not(sHttp.code, 0, 's_client -alpn http/1.1 fails');
  t.match(sHttp.stdout + sHttp.stderr, /no application protocol/, 'with the alert named');

  await stillServes(t, proxy);
  await assertNoLeaks(t, proxy);
});

t.test('after an SSLRequest: ALPN postgresql is chosen when offered, another protocol is refused', async (t) => {
  const negotiate = async (alpn: string[] | undefined) => {
    const plain = net.connect({ host: '127.0.0.1', port: proxy.port });
    await new Promise((r) => plain.once('connect', r));
    plain.write(Buffer.from([0, 0, 0, 8, 4, 210, 22, 47]));
    t.equal((await new Promise<Buffer>((r) => plain.once('data', r))).toString(), 'S');
    const secure = tls.connect({ socket: plain, ca, servername: 'localhost', ...(alpn ? { ALPNProtocols: alpn } : {}) });
    secure.on('error', () => {});
    const ok = await new Promise<boolean>((r) => {
      secure.once('secureConnect', () => r(true));
      secure.once('close', () => r(false));
    });
    const protocol = secure.alpnProtocol;
    secure.destroy();
    return { ok, protocol };
  };
  t.same(await negotiate(['postgresql']), { ok: true, protocol: 'postgresql' }, 'postgresql offered: chosen');
  t.same(await negotiate(undefined), { ok: true, protocol: false }, 'none offered (libpq before 17): TLS as before');
  t.same((await negotiate(['http/1.1'])).ok, false, 'http/1.1 only: refused');
  await stillServes(t, proxy);
});

t.test('a first read of one byte: the proxy gives it back to TLS', async (t) => {
  // A relay that sends the client's first write in two parts, its first byte alone.
  const relay = net.createServer((client) => {
    const upstream = net.connect({ host: '127.0.0.1', port: proxy.port });
    upstream.setNoDelay(true);
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
    client.once('data', (first: Buffer) => {
      client.pause();
      upstream.write(first.subarray(0, 1));
      setTimeout(() => {
        upstream.write(first.subarray(1));
        client.pipe(upstream);
        upstream.pipe(client);
      }, 50);
    });
  });
  await new Promise<void>((r) => relay.listen(0, '127.0.0.1', r));
  t.teardown(() => relay.close());
  const port = (relay.address() as net.AddressInfo).port;
  for (let i = 0; i < 3; i++) {
    const c = directPg(port);
    await c.connect();
    t.same((await c.query('select $1::int as n', [i])).rows, [{ n: i }], `client ${i}: SCRAM and a query through direct TLS`);
    await c.end();
  }
  await assertNoLeaks(t, proxy);
});

t.test('tls.mode require is met by direct TLS; verify-client and the cert method work through it', async (t) => {
  const required = await startProxy(t, cluster, { auth, tls: { ...tlsFiles, mode: 'require' }, services });
  const c = directPg(required.port);
  await c.connect();
  t.same((await c.query('select 3 as n')).rows, [{ n: 3 }], 'require: in');
  await c.end();

  const everyone = [{ name: 'all', match: {}, budget: 2, poolMode: 'transaction', password: 'app-pw' }];
  const cert = await startProxy(t, cluster, { auth: { method: 'cert' }, tls: { ...tlsFiles, mode: 'verify-client' }, services: everyone });
  const withCert = { ssl: { cert: readFileSync(file('client.pem')), key: readFileSync(file('client.key')) }, password: '' };
  const me = directPg(cert.port, withCert);
  await me.connect();
  t.same((await me.query('select current_user as u')).rows, [{ u: 'app_u' }], "the certificate's CN is the user: in, no password");
  await me.end();
  const other = directPg(cert.port, { ...withCert, user: 'postgres' });
  await t.rejects(other.connect(), /certificate authentication failed for user "postgres"/);
  const noCert = directTls(cert.port, { ALPNProtocols: ['postgresql'] });
  await noCert.closed;
  t.ok(noCert.error() !== null || noCert.received().length === 0, 'verify-client without a certificate: no way in');
  await assertNoLeaks(t, cert);
});

t.test('no TLS inside TLS: a second TLS handshake after direct TLS or an SSLRequest is a malformed packet', async (t) => {
  /** The start of a ClientHello sent as data inside TLS (a TLS client over the first would start so): the proxy's answer. */
  const inner = async (outer: tls.TLSSocket) => {
    const chunks: Buffer[] = [];
    outer.on('data', (d: Buffer) => chunks.push(d));
    const closed = new Promise<void>((r) => outer.on('close', () => r()));
    outer.write(Buffer.concat([Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]), Buffer.alloc(32, 7)]));
    await closed;
    return errorFields(Buffer.concat(chunks));
  };
  const direct = directTls(proxy.port, { ALPNProtocols: ['postgresql'] });
  t.ok(await direct.secured);
  const fields = await inner(direct.socket);
  t.equal(fields?.C, '08P01', 'after direct TLS: 08P01');
  t.match(fields?.M, /invalid startup packet length/);

  const plain = net.connect({ host: '127.0.0.1', port: proxy.port });
  await new Promise((r) => plain.once('connect', r));
  plain.write(Buffer.from([0, 0, 0, 8, 4, 210, 22, 47]));
  await new Promise((r) => plain.once('data', r));
  const outer = tls.connect({ socket: plain, ca, servername: 'localhost' });
  await new Promise((r) => outer.once('secureConnect', r));
  const again = await inner(outer);
  t.equal(again?.C, '08P01', 'after an SSLRequest: 08P01');
  await stillServes(t, proxy);
});

t.test('direct TLS to a proxy without TLS: closed without a word; the proxy stays up', async (t) => {
  const plainProxy = await startProxy(t, cluster, { auth, services });
  const before = unmatchedViolations(plainProxy);
  const c = directTls(plainProxy.port, { ALPNProtocols: ['postgresql'] });
  t.notOk(await c.secured, 'no TLS');
  await c.closed;
  t.equal(c.received().length, 0, 'nothing said: a TLS client would take a PostgreSQL error for garbage');
  t.equal(unmatchedViolations(plainProxy), before + 1, 'counted as a protocol violation');
  const pgDirect = directPg(plainProxy.port);
  await t.rejects(pgDirect.connect(), 'node-postgres with sslnegotiation=direct fails to connect');
  const s = await run('sh', ['-c', `openssl s_client -connect 127.0.0.1:${plainProxy.port} -alpn postgresql </dev/null`]);
  t.not(s.code, 0, 's_client fails too');
  const p = new pg.Client({ host: '127.0.0.1', port: plainProxy.port, user: 'app_u', password: 'app-pw', database: 'postgres' });
  await p.connect();
  t.same((await p.query('select 4 as n')).rows, [{ n: 4 }], 'a plain client still gets in');
  await p.end();
  await assertNoLeaks(t, plainProxy);
});
