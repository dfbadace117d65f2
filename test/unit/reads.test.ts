// io/accept.ts, io/raw.ts and io/socket.ts: accepted connections taken as
// raw handles, served either as the bare handle or as one net.Socket, with the
// same behaviour: every byte read in order, writes with backpressure and
// drain, end() that delivers its last bytes, errors and close reported once,
// and server.close() waiting for each connection.
import net from 'node:net';
import t from 'tap';
import { acceptRaw, clientTransport, type Accepted } from '../../src/io/accept.js';
import { binding } from '../../src/io/handles.js';
import type { Transport, TransportHandler } from '../../src/io/transport.js';

async function listening(server: net.Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return (server.address() as net.AddressInfo).port;
}

/** A handler that records what happened; `onData` decides what to do with reads. */
class Recorder implements TransportHandler {
  conn!: Transport;
  chunks: Buffer[] = [];
  drains = 0;
  errors: string[] = [];
  closes = 0;
  closed: Promise<void>;
  private markClosed!: () => void;
  constructor(private readonly handle: (r: Recorder, chunk: Buffer) => void = () => {}) {
    this.closed = new Promise((r) => (this.markClosed = r));
  }
  onData(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.handle(this, chunk);
  }
  onDrain(): void {
    this.drains++;
  }
  onError(message: string): void {
    this.errors.push(message);
  }
  onClose(): void {
    this.closes++;
    this.markClosed();
  }
}

interface Rig {
  server: net.Server;
  port: number;
  /** Resolves with the next accepted connection's recorder. */
  next(): Promise<Recorder>;
  accepted: Accepted[];
}

async function rig(raw: boolean, onData?: (r: Recorder, chunk: Buffer) => void): Promise<Rig> {
  const server = net.createServer();
  const port = await listening(server);
  const waiting: ((r: Recorder) => void)[] = [];
  const ready: Recorder[] = [];
  const accepted: Accepted[] = [];
  acceptRaw(
    server,
    (a) => {
      accepted.push(a);
      const rec = new Recorder(onData);
      rec.conn = clientTransport(a, rec, { raw });
      const w = waiting.shift();
      if (w) w(rec);
      else ready.push(rec);
    },
    () => {},
  );
  return {
    server,
    port,
    accepted,
    next: () => {
      const r = ready.shift();
      return r ? Promise.resolve(r) : new Promise((resolve) => waiting.push(resolve));
    },
  };
}

function connect(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const c = net.connect({ host: '127.0.0.1', port }, () => resolve(c));
    c.on('error', reject);
  });
}

function readAll(client: net.Socket, bytes: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  let have = 0;
  return new Promise((resolve) => {
    const onData = (d: Buffer) => {
      parts.push(d);
      have += d.length;
      if (have >= bytes) {
        client.off('data', onData);
        resolve(Buffer.concat(parts));
      }
    };
    client.on('data', onData);
  });
}

const closeServer = (server: net.Server) => new Promise<void>((r) => server.close(() => r()));

t.test('the raw handle is used where Node has the binding', async (t) => {
  t.ok(binding !== null, 'Node.js 20+ exposes stream_wrap: the fast path is what runs in production');
});

for (const raw of [true, false]) {
  const mode = raw ? 'raw handle' : 'net.Socket';

  t.test(`${mode}: every byte is read and echoed in order, also past one read buffer`, async (t) => {
    const r = await rig(raw, (rec, chunk) => rec.conn.write(chunk));
    const payload = Buffer.alloc(300_000);
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 7) % 251;
    const client = await connect(r.port);
    const echoed = readAll(client, payload.length);
    client.write(payload);
    t.ok((await echoed).equals(payload), 'echoed intact');
    t.ok('handle' in r.accepted[0], 'no net.Socket was made before ours');
    // server.close() waits for the connection it counted, and completes once it is gone.
    let serverClosed = false;
    const done = new Promise<void>((res) => r.server.close(() => ((serverClosed = true), res())));
    await new Promise((res) => setTimeout(res, 50));
    t.notOk(serverClosed, 'close waits for the open connection');
    client.destroy();
    await done;
    t.ok(serverClosed);
  });

  t.test(`${mode}: writes past the kernel's buffer report backpressure, then drain, with nothing lost`, async (t) => {
    const r = await rig(raw);
    const client = await connect(r.port);
    client.pause(); // the client reads nothing yet: the kernel buffers fill
    const rec = await r.next();
    const block = Buffer.alloc(64 * 1024);
    let written = 0;
    let i = 0;
    while (written < 64 * 1024 * 1024) {
      block.fill(i++ % 256);
      const ok = rec.conn.write(Buffer.from(block));
      written += block.length;
      if (!ok) break;
    }
    t.ok(written < 64 * 1024 * 1024, `write() said wait after ${written} bytes`);
    t.equal(rec.drains, 0, 'no drain while the client reads nothing');
    const got = readAll(client, written);
    client.resume();
    const data = await got;
    t.equal(data.length, written, 'every byte arrived');
    let inOrder = true;
    for (let b = 0; b < written / block.length; b++) if (data[b * block.length] !== b % 256 || data[(b + 1) * block.length - 1] !== b % 256) inOrder = false;
    t.ok(inOrder, 'in order');
    await new Promise((res) => setTimeout(res, 20));
    t.equal(rec.drains, 1, 'one drain once the queue emptied');
    client.destroy();
    await rec.closed;
    await closeServer(r.server);
  });

  t.test(`${mode}: end(data) delivers its last bytes, then closes once the client closes`, async (t) => {
    const r = await rig(raw);
    const client = await connect(r.port);
    const rec = await r.next();
    let clientSawEnd = false;
    client.on('end', () => {
      clientSawEnd = true;
      client.end();
    });
    const got = readAll(client, 5);
    rec.conn.end(Buffer.from('bye!\n'));
    t.notOk(rec.conn.writable, 'not writable after end');
    t.equal(rec.conn.write(Buffer.from('late')), false, 'a write after end is refused');
    t.equal((await got).toString(), 'bye!\n');
    await rec.closed;
    t.ok(clientSawEnd, 'the client saw the end of the stream');
    t.equal(rec.closes, 1, 'closed once');
    t.same(rec.errors, []);
    await closeServer(r.server);
  });

  t.test(`${mode}: close() after a write delivers the bytes, then closes without waiting for the client`, async (t) => {
    const r = await rig(raw);
    const client = await connect(r.port);
    const rec = await r.next();
    const got = readAll(client, 3);
    const ended = new Promise<void>((res) => client.on('end', () => res()));
    rec.conn.write(Buffer.from('bye'));
    rec.conn.close();
    t.equal((await got).toString(), 'bye');
    await rec.closed; // the client has not closed its side: nothing waited for it
    await ended;
    t.equal(rec.closes, 1);
    t.same(rec.errors, []);
    client.destroy();
    await closeServer(r.server);
  });

  t.test(`${mode}: a client that closes its side is closed here too`, async (t) => {
    const r = await rig(raw);
    const client = await connect(r.port);
    const rec = await r.next();
    client.end('last words');
    await rec.closed;
    t.equal(Buffer.concat(rec.chunks).toString(), 'last words', 'bytes before the end were read');
    t.equal(rec.closes, 1);
    t.same(rec.errors, []);
    await closeServer(r.server);
  });

  t.test(`${mode}: a reset is reported as an error, then a close`, async (t) => {
    const r = await rig(raw);
    const client = await connect(r.port);
    const rec = await r.next();
    client.write('x');
    await new Promise((res) => setTimeout(res, 20));
    client.resetAndDestroy();
    await rec.closed;
    t.equal(rec.closes, 1, 'closed once');
    t.match(rec.errors.join(','), /ECONNRESET/, 'the error names the cause');
    await closeServer(r.server);
  });

  t.test(`${mode}: paused, nothing is delivered; resumed, everything is`, async (t) => {
    const r = await rig(raw);
    const client = await connect(r.port);
    const rec = await r.next();
    rec.conn.pause();
    t.ok(rec.conn.isPaused());
    client.write('held');
    await new Promise((res) => setTimeout(res, 50));
    t.equal(rec.chunks.length, 0, 'nothing read while paused');
    rec.conn.resume();
    t.notOk(rec.conn.isPaused());
    await new Promise((res) => setTimeout(res, 50));
    t.equal(Buffer.concat(rec.chunks).toString(), 'held');
    rec.conn.destroy();
    rec.conn.destroy(); // idempotent
    await rec.closed;
    await new Promise((res) => setTimeout(res, 20));
    t.equal(rec.closes, 1, 'closed once');
    await closeServer(r.server);
  });
}

t.test('an ordinary accepted socket is read through data events', async (t) => {
  const server = net.createServer((socket) => {
    const rec = new Recorder((r, chunk) => r.conn.write(chunk));
    rec.conn = clientTransport({ socket }, rec);
  });
  const port = await listening(server);
  const client = await connect(port);
  const got = readAll(client, 5);
  client.write('hello');
  t.equal((await got).toString(), 'hello');
  client.destroy();
  await closeServer(server);
});
