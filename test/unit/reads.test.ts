// io/reads.ts: one socket per accepted connection, read through onread, and
// counted by its server so that server.close() waits for it.
import net from 'node:net';
import t from 'tap';
import { acceptRaw, acceptedSocket, type Accepted } from '../../src/io/reads.js';

async function listening(server: net.Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return (server.address() as net.AddressInfo).port;
}

/** Echoes every chunk back, as the proxy would forward it. */
function echoSessions(server: net.Server, seen: Accepted[]): void {
  acceptRaw(
    server,
    (accepted) => {
      seen.push(accepted);
      const socket: net.Socket = acceptedSocket(accepted, (chunk) => socket.write(chunk));
    },
    () => {},
  );
}

async function roundTrip(port: number, payload: Buffer): Promise<{ echoed: Buffer; client: net.Socket }> {
  const client = net.connect({ host: '127.0.0.1', port });
  await new Promise((r) => client.once('connect', r));
  client.write(payload);
  const parts: Buffer[] = [];
  let have = 0;
  await new Promise<void>((resolve) =>
    client.on('data', (d) => {
      parts.push(d);
      have += d.length;
      if (have >= payload.length) resolve();
    }),
  );
  return { echoed: Buffer.concat(parts), client };
}

t.test('accepted connections arrive as raw handles and read every byte, also past one read buffer', async (t) => {
  const server = net.createServer();
  const port = await listening(server);
  const seen: Accepted[] = [];
  echoSessions(server, seen);
  const payload = Buffer.alloc(300_000);
  for (let i = 0; i < payload.length; i++) payload[i] = (i * 7) % 251;
  const { echoed, client } = await roundTrip(port, payload);
  t.ok(echoed.equals(payload), 'echoed intact');
  t.ok('handle' in seen[0], 'no net.Socket was made before ours');
  // server.close() waits for the connection it counted, and completes once it is gone.
  let closed = false;
  const done = new Promise<void>((r) => server.close(() => ((closed = true), r())));
  await new Promise((r) => setTimeout(r, 50));
  t.notOk(closed, 'close waits for the open connection');
  client.destroy();
  await done;
  t.ok(closed);
});

t.test('an ordinary accepted socket is read through data events', async (t) => {
  const server = net.createServer((socket) => {
    const s = acceptedSocket({ socket }, (chunk) => s.write(chunk));
  });
  const port = await listening(server);
  const { echoed, client } = await roundTrip(port, Buffer.from('hello'));
  t.equal(echoed.toString(), 'hello');
  client.destroy();
  await new Promise<void>((r) => server.close(() => r()));
});
