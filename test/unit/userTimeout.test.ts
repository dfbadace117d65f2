// TCP_USER_TIMEOUT through ffi-rs, on real sockets: set on one end and read
// back from the kernel; the value sockets get from the config; and nothing
// thrown for a socket without an fd (it runs on every accept).
import net from 'node:net';
import t from 'tap';
import { validateConfig } from '../../src/config/schema.js';
import { acceptRaw, clientTransport } from '../../src/io/accept.js';
import { connectTransport } from '../../src/io/socket.js';
import { fdOf, getUserTimeout, probeUserTimeout, setUserTimeout, userTimeoutMs } from '../../src/io/userTimeout.js';

t.test('the value: as configured, else keepalive idle time + 10 s, 0 with keepalive off', async (t) => {
  const services = [{ name: 'web', budget: 1 }];
  t.equal(userTimeoutMs(validateConfig({ services })), 40_000, 'the default keepalive (30 s) + 10 probes 1 s apart');
  t.equal(userTimeoutMs(validateConfig({ services, tcpKeepaliveMs: 1000 })), 11_000);
  t.equal(userTimeoutMs(validateConfig({ services, tcpKeepaliveMs: 0 })), 0, 'keepalive off: the kernel default');
  t.equal(userTimeoutMs(validateConfig({ services, tcpUserTimeoutMs: 5000 })), 5000, 'as configured');
  t.equal(userTimeoutMs(validateConfig({ services, tcpUserTimeoutMs: 0 })), 0, '0: the kernel default');
  t.throws(() => validateConfig({ services, tcpUserTimeoutMs: -1 }), /tcpUserTimeoutMs/);
});

t.test('set on a socket, the kernel has it', { skip: process.platform !== 'linux' && 'Linux only' }, async (t) => {
  t.equal(probeUserTimeout(), null, 'available here (ffi-rs and its binary are installed)');
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const accepted = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
  const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
  await new Promise((resolve) => client.once('connect', resolve));
  const socket = await accepted;
  t.teardown(() => {
    client.destroy();
    socket.destroy();
    server.close();
  });

  const fd = fdOf(socket);
  t.type(fd, 'number');
  t.equal(fdOf((socket as unknown as { _handle: unknown })._handle), fd, 'the raw handle has the same fd');
  t.equal(getUserTimeout(fd), 0, 'the kernel default before');
  t.ok(setUserTimeout(fd, 12_345));
  t.equal(getUserTimeout(fd), 12_345, 'read back from the kernel');
  t.equal(getUserTimeout(fdOf(client)), 0, 'the other end is untouched');
  t.ok(setUserTimeout(fd, 0));
  t.equal(getUserTimeout(fd), 0, '0 restores the default');

  t.equal(setUserTimeout(undefined, 1000), false, 'no fd: false, nothing thrown');
  t.equal(setUserTimeout(-1, 1000), false);
  t.equal(fdOf(null), undefined);
  const closed = fdOf(client)!;
  client.destroy();
  await new Promise((resolve) => client.once('close', resolve));
  t.equal(fdOf(client), undefined, 'a closed socket has no fd');
  t.equal(getUserTimeout(closed + 1000), null, 'a bad fd reads as null');
});

t.test('the transports set it: an accepted client (raw handle or socket) and a server connection', { skip: process.platform !== 'linux' && 'Linux only' }, async (t) => {
  const handler = { onData() {}, onDrain() {}, onError() {}, onClose() {} };
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const seen: (number | null)[] = [];
  const transports: { destroy(): void }[] = [];
  acceptRaw(
    server,
    (accepted) => {
      transports.push(clientTransport(accepted, handler, { userTimeoutMs: 9000 }));
      seen.push(getUserTimeout(fdOf('socket' in accepted ? accepted.socket : accepted.handle)));
    },
    () => {},
  );
  const port = (server.address() as net.AddressInfo).port;
  let connected = (): void => {};
  const up = new Promise<void>((resolve) => (connected = resolve));
  const out = connectTransport({ host: '127.0.0.1', port, keepAliveMs: 0, userTimeoutMs: 7000 }, { ...handler, onConnect: () => connected() });
  transports.push(out);
  await up;
  t.equal(getUserTimeout(fdOf(out.socket)), 7000, 'the server connection has it (connectTransport)');
  while (seen.length === 0) await new Promise((resolve) => setTimeout(resolve, 5));
  t.same(seen, [9000], 'the accepted client has it (clientTransport)');
  for (const x of transports) x.destroy();
  server.close();
});
