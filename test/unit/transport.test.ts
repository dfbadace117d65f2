// io/selfTest.ts and io/tls.ts: the fast path passes its own start-up
// self-test on this Node.js, and TLS starts over either kind of accepted
// transport (the raw handle and the net.Socket), with bytes intact both ways,
// after an SSLRequest or directly (the ClientHello's first bytes already read).
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Duplex } from 'node:stream';
import tls from 'node:tls';
import t, { type Test } from 'tap';
import { acceptRaw, clientTransport } from '../../src/io/accept.js';
import { fastIo } from '../../src/io/handles.js';
import { RawTransport } from '../../src/io/raw.js';
import { checkFastPath } from '../../src/io/selfTest.js';
import { startTls, type TlsUpgradeHandler } from '../../src/io/tls.js';
import type { Transport } from '../../src/io/transport.js';

t.test('the fast path passes the self-test on this Node.js', async (t) => {
  t.equal(await checkFastPath(), null);
  t.equal(fastIo(), process.env.PGBUDGET_IO !== 'portable', 'and stays on');
  t.equal(await checkFastPath(), null, 'run once per process, the verdict kept');
});

function selfSigned(): { key: Buffer; cert: Buffer } {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pgbudget-tls-'));
  try {
    execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=localhost', '-days', '1', '-keyout', path.join(dir, 'k.pem'), '-out', path.join(dir, 'c.pem')], { stdio: 'ignore' });
    return { key: readFileSync(path.join(dir, 'k.pem')), cert: readFileSync(path.join(dir, 'c.pem')) };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const { key, cert } = selfSigned();

/**
 * A listener whose every connection starts TLS, as `start` says, at its
 * first read, and echoes what it reads decrypted; what it read, and how the
 * handshake went, are kept.
 */
async function tlsEchoServer(t: Test, raw: boolean, start: (plain: Transport, firstRead: Buffer, handler: TlsUpgradeHandler) => Transport) {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const got: Buffer[] = [];
  const seen: { firstRead: Buffer | null; alpn: string | null | undefined } = { firstRead: null, alpn: undefined };
  let closed!: () => void;
  const serverClosed = new Promise<void>((r) => (closed = r));
  acceptRaw(
    server,
    (accepted) => {
      let plain: Transport | null = null;
      plain = clientTransport(accepted, {
        onData(chunk) {
          seen.firstRead = chunk;
          const secure = start(plain!, chunk, {
            onSecure: (_peer, alpn) => (seen.alpn = alpn),
            onData: (c) => {
              got.push(c);
              secure.write(Buffer.concat([Buffer.from('echo:'), c]));
            },
            onDrain() {},
            onError: (m) => t.fail(m),
            onClose: () => closed(),
          });
        },
        onDrain() {},
        onError: (m) => t.fail(m),
        onClose() {},
      }, { raw });
      t.equal(plain instanceof RawTransport, raw && fastIo(), 'the transport kind');
    },
    () => {},
  );
  return { port: (server.address() as net.AddressInfo).port, got, seen, serverClosed, server };
}

/** Sends `size` bytes over `secure`, waits for them to come back, and closes once the listener has counted the connection off. */
async function roundTrip(t: Test, secure: tls.TLSSocket, echo: Awaited<ReturnType<typeof tlsEchoServer>>, size: number): Promise<void> {
  const payload = Buffer.alloc(size, 'pgbudget');
  secure.write(payload);
  let back = 0;
  await new Promise<void>((resolve) =>
    secure.on('data', (d: Buffer) => {
      back += d.length;
      if (back >= payload.length) resolve();
    }),
  );
  t.same(Buffer.concat(echo.got), payload, 'every byte arrived decrypted, in order');
  secure.end();
  await echo.serverClosed;
  await new Promise<void>((r) => echo.server.close(() => r()));
  t.pass('the listener closed: the connection was counted off');
}

for (const raw of [true, false]) {
  t.test(`TLS over the ${raw ? 'raw handle' : 'net.Socket'} transport, after plain bytes, as PostgreSQL's SSLRequest does it`, async (t) => {
    const echo = await tlsEchoServer(t, raw, (plain, chunk, handler) => {
      // The 8-byte request: answer 'S' and start TLS before the ClientHello can be read.
      t.same([...chunk], [0, 0, 0, 8, 4, 210, 22, 47], 'the plain request');
      plain.write(Buffer.from('S'));
      return startTls(plain, { isServer: true, key, cert }, handler);
    });
    const plain = net.connect({ host: '127.0.0.1', port: echo.port });
    await new Promise((r) => plain.once('connect', r));
    plain.write(Buffer.from([0, 0, 0, 8, 4, 210, 22, 47]));
    const answer = await new Promise<Buffer>((r) => plain.once('data', r));
    t.equal(answer.toString(), 'S');
    const secure = tls.connect({ socket: plain, rejectUnauthorized: false });
    await new Promise((r) => secure.once('secureConnect', r));
    await roundTrip(t, secure, echo, 300_000);
    t.equal(echo.seen.alpn, null, 'the handshake was reported, no ALPN offered');
  });
}

/**
 * A client's socket to `port` that sends its first write in two parts, the
 * first byte alone and the rest 50 ms later, so the server's first read of
 * it is that byte.
 */
async function splitFirstWrite(port: number): Promise<Duplex> {
  const plain = net.connect({ host: '127.0.0.1', port });
  plain.setNoDelay(true);
  await new Promise((r) => plain.once('connect', r));
  let first = true;
  const stream = new Duplex({
    write(chunk: Buffer, _encoding, callback) {
      if (!first) return plain.write(chunk, callback);
      first = false;
      plain.write(chunk.subarray(0, 1));
      setTimeout(() => plain.write(chunk.subarray(1), callback), 50);
    },
    final(callback) {
      plain.end(callback);
    },
    read() {
      plain.resume();
    },
    destroy(err, callback) {
      plain.destroy();
      callback(err);
    },
  });
  plain.on('data', (d: Buffer) => {
    if (!stream.push(d)) plain.pause();
  });
  plain.on('end', () => stream.push(null));
  plain.on('close', () => stream.destroy());
  return stream;
}

for (const raw of [true, false]) {
  for (const firstByteAlone of [false, true]) {
    const how = firstByteAlone ? 'the first read one byte' : 'the first read the whole ClientHello';
    t.test(`direct TLS over the ${raw ? 'raw handle' : 'net.Socket'} transport, ${how}: the bytes read go to TLS first`, async (t) => {
      // No answer: the first read is the start of the ClientHello, given back to TLS.
      const echo = await tlsEchoServer(t, raw, (plain, chunk, handler) =>
        startTls(plain, { isServer: true, key, cert, ALPNProtocols: ['postgresql'] }, handler, chunk),
      );
      const options = { rejectUnauthorized: false, ALPNProtocols: ['postgresql'] };
      const secure = firstByteAlone
        ? tls.connect({ ...options, socket: await splitFirstWrite(echo.port) })
        : tls.connect({ ...options, host: '127.0.0.1', port: echo.port });
      await new Promise((r) => secure.once('secureConnect', r));
      t.equal(secure.alpnProtocol, 'postgresql', 'the client sees ALPN postgresql');
      t.equal(echo.seen.firstRead![0], 0x16, 'the first read is the start of the TLS handshake');
      if (firstByteAlone) t.equal(echo.seen.firstRead!.length, 1, 'one byte alone');
      await roundTrip(t, secure, echo, 100_000);
      t.equal(echo.seen.alpn, 'postgresql', 'the server side reported it');
    });
  }
}
