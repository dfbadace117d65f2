// The start-up self-test of the fast path. The feature checks in
// handles.ts and views.ts see only that Node's internals exist; this sees
// whether they still do what this code assumes: it drives a raw-handle
// client connection and a direct server connection over loopback, with
// writes big enough to go asynchronous and backpressure on both sides,
// checks every byte that comes back and that both ends close and are
// counted off, and checks sliceOf against subarray. If anything is off,
// every connection from then on is an ordinary net.Socket.
import net from 'node:net';
import { fastIo, useSocketsOnly } from './handles.js';
import { acceptRaw, clientTransport } from './accept.js';
import { connectTransport } from './socket.js';
import type { Transport, TransportHandler } from './transport.js';
import { fastViews, sliceOf, useSubarrayOnly } from './views.js';

/** Enough to fill the loopback socket buffers, so writes go asynchronous and drain. */
const PAYLOAD_BYTES = 4 * 1024 * 1024;
const SLICE_BYTES = 1024 * 1024;
const TIMEOUT_MS = 5000;

let verdict: Promise<string | null> | null = null;

/**
 * Runs the self-test once per process; resolves with null when the fast
 * path works (or is off anyway), else with what was wrong, after turning
 * the fast path off.
 */
export function checkFastPath(): Promise<string | null> {
  return (verdict ??= run());
}

async function run(): Promise<string | null> {
  if (!fastIo() && !fastViews()) return null;
  let problem: string | null;
  try {
    problem = checkViews() ?? (fastIo() ? await checkLoopback() : null);
  } catch (err) {
    problem = `self-test failed: ${(err as Error)?.message ?? err}`;
  }
  if (problem !== null) {
    useSocketsOnly();
    useSubarrayOnly();
  }
  return problem;
}

function checkViews(): string | null {
  const whole = pattern(300);
  const pooled = Buffer.from('pgbudget self-test');
  for (const b of [whole, whole.subarray(7, 250), pooled]) {
    for (const [s, e] of [[0, b.length], [3, 9], [b.length, b.length]] as const) {
      const v = sliceOf(b, s, e);
      const ok = v instanceof Buffer && v.equals(b.subarray(s, e)) && v.buffer === b.buffer && v.byteOffset === b.byteOffset + s;
      if (!ok) return `sliceOf(${s}, ${e}) is not subarray`;
    }
  }
  return null;
}

/** Bytes that show a shift, a repeat or a stale buffer: a prime-length block repeated. */
function pattern(n: number): Buffer {
  const block = Buffer.alloc(251);
  for (let i = 0; i < block.length; i++) block[i] = i * 131 + 7;
  return Buffer.alloc(n, block);
}

/** Echoes what it reads, pausing while its writes are queued. */
class Echo implements TransportHandler {
  transport: Transport | null = null;
  closed = false;
  onData(chunk: Buffer): void {
    if (!this.transport!.write(chunk)) this.transport!.pause();
  }
  onDrain(): void {
    this.transport!.resume();
  }
  onError(): void {}
  onClose(): void {
    this.closed = true;
  }
}

/**
 * Sends the payload in slices, not reading until its writes back up: the
 * echo's writes back up first and it must pause, so both sides' writes go
 * asynchronous and drain. Checks what comes back.
 */
class Sender implements TransportHandler {
  transport: Transport | null = null;
  private sent = 0;
  private received = 0;
  private mismatch: string | null = null;

  constructor(
    private readonly payload: Buffer,
    private readonly done: (problem: string | null) => void,
  ) {}

  start(transport: Transport): void {
    this.transport = transport;
    transport.pause();
    this.sendMore();
  }

  private sendMore(): void {
    const t = this.transport!;
    while (this.sent < this.payload.length) {
      const n = Math.min(SLICE_BYTES, this.payload.length - this.sent);
      const ok = t.write(this.payload.subarray(this.sent, this.sent + n));
      this.sent += n;
      if (!ok) return t.resume();
    }
    t.end();
    t.resume();
  }

  onData(chunk: Buffer): void {
    if (this.mismatch === null && !chunk.equals(this.payload.subarray(this.received, this.received + chunk.length))) {
      this.mismatch = `bytes ${this.received}..${this.received + chunk.length} came back changed`;
    }
    this.received += chunk.length;
  }
  onDrain(): void {
    this.sendMore();
  }
  onError(message: string): void {
    this.done(`loopback: ${message}`);
  }
  onClose(): void {
    if (this.mismatch !== null) return this.done(this.mismatch);
    if (this.received !== this.payload.length) return this.done(`${this.received} of ${this.payload.length} bytes came back`);
    this.done(null);
  }
}

function checkLoopback(): Promise<string | null> {
  return new Promise((resolve) => {
    const server = net.createServer();
    const echo = new Echo();
    let settled = false;
    const finish = (problem: string | null) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (problem !== null) {
        sender.transport?.destroy();
        echo.transport?.destroy();
        server.close();
      }
      resolve(problem);
    };
    const timer = setTimeout(() => finish(`no complete echo within ${TIMEOUT_MS} ms`), TIMEOUT_MS);
    const sender = new Sender(pattern(PAYLOAD_BYTES), (problem) => {
      if (problem !== null) return finish(problem);
      // The listener closes only once the raw connection is counted off it.
      server.close(() => finish(echo.closed ? null : 'the connecting side did not report its close'));
    });
    server.listen(0, '127.0.0.1', () => {
      acceptRaw(server, (accepted) => sender.start(clientTransport(accepted, sender)), (err) => finish(`accept: ${err.message}`));
      const port = (server.address() as net.AddressInfo).port;
      const connecting = connectTransport({ host: '127.0.0.1', port, keepAliveMs: 0 }, { ...handlerOf(echo), onConnect() {} });
      echo.transport = connecting;
    });
  });
}

/** A handler object's methods, bound (to spread into a ConnectHandler). */
function handlerOf(h: TransportHandler): TransportHandler {
  return { onData: (c) => h.onData(c), onDrain: () => h.onDrain(), onError: (m) => h.onError(m), onClose: () => h.onClose() };
}
