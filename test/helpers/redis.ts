// A throwaway Redis server for one test: its own port (below the ephemeral
// range), nothing saved to disk, a child process the test can stop, pause
// (SIGSTOP), kill and start again on the same port.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { probePort } from './prometheus.js';

interface Teardown {
  teardown(fn: () => unknown): void;
}

export interface TestRedis {
  port: number;
  url: string;
  /** A client of its own (commands fail at once while the server is down). */
  client(): Redis;
  /** Stops the server (SIGTERM), all its data gone (nothing is saved). */
  stop(): Promise<void>;
  /** Starts it again on the same port, empty. */
  start(): Promise<void>;
  /** SIGSTOP: the server keeps its connections but answers nothing. */
  pause(): void;
  /** SIGCONT after pause(). */
  resume(): void;
  /** Commands the server has run, by name (INFO commandstats). */
  commandCounts(): Promise<Record<string, number>>;
}

const REDIS_SERVER = '/usr/bin/redis-server';

export async function startRedis(t: Teardown, opts: { password?: string } = {}): Promise<TestRedis> {
  const port = await probePort();
  const dir = await mkdtemp(path.join(os.tmpdir(), 'pgbudget-redis-'));
  let proc: ChildProcess | null = null;
  const clients: Redis[] = [];
  const start = async () => {
    const auth = opts.password ? ['--requirepass', opts.password] : [];
    const p = spawn(REDIS_SERVER, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, '--protected-mode', 'no', ...auth], {
      stdio: 'ignore',
    });
    proc = p;
    const deadline = Date.now() + 10_000;
    for (;;) {
      const up = await new Promise<boolean>((resolve) => {
        const s = net.connect(port, '127.0.0.1', () => {
          s.end('PING\r\n');
          // A server that wants a password answers NOAUTH: up all the same.
          s.once('data', (d) => resolve(/^(\+PONG|-NOAUTH)/.test(d.toString())));
        });
        s.once('error', () => resolve(false));
      });
      if (up) return;
      if (p.exitCode !== null || Date.now() > deadline) throw new Error(`redis-server on port ${port} did not start`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  const stop = async () => {
    const p = proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const exited = new Promise((r) => p.once('exit', r));
    p.kill('SIGCONT');
    p.kill('SIGTERM');
    await exited;
  };
  await start();
  t.teardown(async () => {
    for (const c of clients) c.disconnect();
    if (proc && proc.exitCode === null) {
      const p = proc;
      const exited = new Promise((r) => p.once('exit', r));
      p.kill('SIGCONT');
      p.kill('SIGKILL');
      await exited;
    }
    await rm(dir, { recursive: true, force: true });
  });
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    client() {
      const c = new Redis({ host: '127.0.0.1', port, password: opts.password, maxRetriesPerRequest: 1, enableOfflineQueue: true });
      c.on('error', () => undefined);
      clients.push(c);
      return c;
    },
    stop,
    start,
    pause: () => proc?.kill('SIGSTOP'),
    resume: () => proc?.kill('SIGCONT'),
    async commandCounts() {
      const c = new Redis({ host: '127.0.0.1', port, password: opts.password });
      try {
        const text = (await c.info('commandstats')) as string;
        const out: Record<string, number> = {};
        for (const m of text.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) out[m[1]] = Number(m[2]);
        return out;
      } finally {
        c.disconnect();
      }
    },
  };
}

/**
 * A TCP relay to Redis for one instance, whose link can be cut: cut()
 * holds back what either side sends (the sockets stay open, the bytes wait,
 * as in a network partition), heal() delivers it and lets the rest through.
 */
export async function partitionable(t: Teardown, redis: TestRedis): Promise<{ url: string; cut(): void; heal(): void }> {
  const held: (() => void)[] = [];
  const sockets: net.Socket[] = [];
  let cut = false;
  const forward = (from: net.Socket, to: net.Socket) =>
    from.on('data', (d: Buffer) => {
      if (cut) held.push(() => to.write(d));
      else to.write(d);
    });
  const server = net.createServer((client) => {
    const upstream = net.connect(redis.port, '127.0.0.1');
    forward(client, upstream);
    forward(upstream, client);
    const close = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', close).on('close', close);
    upstream.on('error', close).on('close', close);
    sockets.push(client, upstream);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  const port = (server.address() as net.AddressInfo).port;
  return {
    url: `redis://127.0.0.1:${port}`,
    cut() {
      cut = true;
    },
    heal() {
      cut = false;
      for (const send of held.splice(0)) send();
    },
  };
}
