// io/selfTest.ts and io/tls.ts: the fast path passes its own start-up
// self-test on this Node.js, and TLS starts over either kind of accepted
// transport (the raw handle and the net.Socket), with bytes intact both ways.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import t from 'tap';
import { acceptRaw, clientTransport } from '../../src/io/accept.js';
import { fastIo } from '../../src/io/handles.js';
import { RawTransport } from '../../src/io/raw.js';
import { checkFastPath } from '../../src/io/selfTest.js';
import { startTls } from '../../src/io/tls.js';
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

for (const raw of [true, false]) {
  t.test(`TLS over the ${raw ? 'raw handle' : 'net.Socket'} transport, after plain bytes, as PostgreSQL's SSLRequest does it`, async (t) => {
    const server = net.createServer();
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as net.AddressInfo).port;
    const got: Buffer[] = [];
    let secured = false;
    let closed!: () => void;
    const serverClosed = new Promise<void>((r) => (closed = r));
    acceptRaw(
      server,
      (accepted) => {
        let plain: Transport | null = null;
        plain = clientTransport(accepted, {
          onData(chunk) {
            // The 8-byte request: answer 'S' and start TLS before the ClientHello can be read.
            t.same([...chunk], [0, 0, 0, 8, 4, 210, 22, 47], 'the plain request');
            plain!.write(Buffer.from('S'));
            const secure = startTls(plain!, { isServer: true, key, cert }, {
              onSecure: () => (secured = true),
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
    const plain = net.connect({ host: '127.0.0.1', port });
    await new Promise((r) => plain.once('connect', r));
    plain.write(Buffer.from([0, 0, 0, 8, 4, 210, 22, 47]));
    const answer = await new Promise<Buffer>((r) => plain.once('data', r));
    t.equal(answer.toString(), 'S');
    const secure = tls.connect({ socket: plain, rejectUnauthorized: false });
    await new Promise((r) => secure.once('secureConnect', r));
    const payload = Buffer.alloc(300_000, 'pgbudget');
    secure.write(payload);
    let back = 0;
    await new Promise<void>((resolve) =>
      secure.on('data', (d: Buffer) => {
        back += d.length;
        if (back >= payload.length) resolve();
      }),
    );
    t.ok(secured, 'the handshake was reported');
    t.same(Buffer.concat(got), payload, 'every byte arrived decrypted, in order');
    secure.end();
    await serverClosed;
    await new Promise<void>((r) => server.close(() => r()));
    t.pass('the listener closed: the connection was counted off');
  });
}
