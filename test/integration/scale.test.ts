// Thousands of clients through a budget of 20: PGBUDGET_SCALE_CLIENTS
// (default 2,000) clients log in to the real CLI (a separate process, so the
// two ends' file descriptors are split between processes) and stay
// connected while every one of them runs a simple query, an extended-protocol
// query and a transaction, each checking its answer. Every client succeeds,
// Postgres never sees more than the budget, and nothing leaks.
//
// The clients are raw sockets with an event-driven parser: a node-postgres
// client per connection is too heavy at 10,000.
import { readFileSync } from 'node:fs';
import net from 'node:net';
import t from 'tap';
import { withCluster } from '../helpers/cluster.js';
import { assertNoLeaksHttp, frontend, scrape, sleep, spawnProxy, watchProxyBackends, type RawMessage } from '../helpers/proxy.js';
import { startupPacket } from '../helpers/wire.js';

const CLIENTS = Number(process.env.PGBUDGET_SCALE_CLIENTS ?? 2000);
const BUDGET = 20;
/** TCP connects in progress at once (the proxy listens with Node's default backlog of 511) */
const CONNECTING = 200;

const cluster = await withCluster(t, { maxConnections: BUDGET + 10 });
await cluster.query('create role scale login');

interface Light {
  socket: net.Socket;
  /** the messages up to and including the next ReadyForQuery; rejects if the connection closes first */
  untilReady(): Promise<RawMessage[]>;
}

/** A minimal protocol client: one 'data' parser, no polling. */
function light(port: number): Promise<Light> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    socket.setNoDelay(true);
    let buf: Buffer = Buffer.alloc(0);
    let batch: RawMessage[] = [];
    const done: RawMessage[][] = [];
    let waiter: { resolve: (m: RawMessage[]) => void; reject: (e: Error) => void } | null = null;
    let closed: Error | null = null;
    socket.on('data', (d: Buffer) => {
      buf = buf.length ? Buffer.concat([buf, d]) : d;
      let i = 0;
      while (buf.length - i >= 5) {
        const len = buf.readInt32BE(i + 1);
        if (buf.length - i < len + 1) break;
        const m = { type: String.fromCharCode(buf[i]), body: Buffer.from(buf.subarray(i + 5, i + 1 + len)) };
        i += len + 1;
        batch.push(m);
        if (m.type === 'Z') {
          const b = batch;
          batch = [];
          if (waiter) {
            const w = waiter;
            waiter = null;
            w.resolve(b);
          } else done.push(b);
        }
      }
      buf = buf.subarray(i);
    });
    socket.on('error', (e) => (closed ??= e));
    socket.on('close', () => {
      closed ??= new Error('connection closed');
      const err = new Error(`${closed.message}${batch.length ? `; got ${describe(batch)}` : ''}`);
      waiter?.reject(err);
      waiter = null;
    });
    socket.once('connect', () =>
      resolve({
        socket,
        untilReady() {
          if (done.length) return Promise.resolve(done.shift()!);
          if (closed) return Promise.reject(new Error(`${closed.message}${batch.length ? `; got ${describe(batch)}` : ''}`));
          return new Promise((res, rej) => (waiter = { resolve: res, reject: rej }));
        },
      }),
    );
    socket.once('error', reject);
  });
}

function errorText(m: RawMessage): string {
  const fields: Record<string, string> = {};
  let j = 0;
  while (j < m.body.length && m.body[j] !== 0) {
    const end = m.body.indexOf(0, j + 1);
    fields[String.fromCharCode(m.body[j])] = m.body.toString('utf8', j + 1, end);
    j = end + 1;
  }
  return `${fields.C}: ${fields.M}`;
}

function describe(ms: RawMessage[]): string {
  return ms.map((m) => (m.type === 'E' ? `E(${errorText(m)})` : m.type)).join(' ');
}

/** The text columns of every DataRow. */
function rows(ms: RawMessage[]): string[][] {
  return ms
    .filter((m) => m.type === 'D')
    .map((m) => {
      const out: string[] = [];
      let at = 2;
      for (let c = m.body.readInt16BE(0); c > 0; c--) {
        const len = m.body.readInt32BE(at);
        out.push(len < 0 ? '\0null' : m.body.toString('utf8', at + 4, at + 4 + len));
        at += 4 + Math.max(0, len);
      }
      return out;
    });
}

function expect(what: string, ms: RawMessage[], want: string[][]): void {
  const bad = ms.find((m) => m.type === 'E');
  if (bad) throw new Error(`${what}: ${errorText(bad)}`);
  const got = rows(ms);
  if (JSON.stringify(got) !== JSON.stringify(want)) throw new Error(`${what}: WRONG ANSWER wanted ${JSON.stringify(want)}, got ${JSON.stringify(got)}`);
}

/** Parse/Bind/Execute/Sync of `select $1::int, $2::text` with text parameters. */
function extended(n: number, tag: string): Buffer {
  const params = [String(n), tag].map((p) => {
    const b = Buffer.from(p);
    const len = Buffer.alloc(4);
    len.writeInt32BE(b.length);
    return Buffer.concat([len, b]);
  });
  const count = Buffer.alloc(2);
  count.writeInt16BE(2);
  return Buffer.concat([
    frontend('P', Buffer.from('\0select $1::int, $2::text\0\0\0')),
    frontend('B', Buffer.concat([Buffer.from('\0\0'), Buffer.from([0, 0]), count, ...params, Buffer.from([0, 0])])),
    frontend('E', Buffer.from('\0\0\0\0\0')),
    frontend('S'),
  ]);
}

function rssMiB(pid: number): number {
  return Math.round(Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0) / 1024);
}

/** Runs fn over items with at most `limit` at once. */
async function limited<T>(items: T[], limit: number, fn: (x: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) await fn(items[next++]);
    }),
  );
}

t.test(`${CLIENTS} concurrent clients through a budget of ${BUDGET}: every one served, the budget never exceeded, nothing leaked`, async (t) => {
  const queueTimeoutMs = Math.max(60_000, CLIENTS * 20);
  const p = await spawnProxy(t, cluster, {
    upstream: { maxConnections: BUDGET },
    startupTimeoutMs: 60_000,
    services: [
      { name: 'scale', match: { user: 'scale' }, budget: BUDGET, poolMode: 'transaction', queue: { maxWaiting: CLIENTS + 100, timeoutMs: queueTimeoutMs } },
    ],
  });
  const backends = watchProxyBackends(cluster.url());
  let maxHeld = 0;
  let maxWaiting = 0;
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      const s = JSON.parse((await scrape(p.adminPort, '/status')).body) as {
        upstream: { serverConnections: number };
        services: { clients: { waiting: number } }[];
      };
      maxHeld = Math.max(maxHeld, s.upstream.serverConnections);
      maxWaiting = Math.max(maxWaiting, s.services[0].clients.waiting);
      await sleep(50);
    }
  })();

  const failures: Record<string, number> = {};
  const firstFailure: string[] = [];
  const fail = (id: number, phase: string, err: unknown) => {
    const msg = (err as Error).message ?? String(err);
    const key = `${phase}: ${msg.replace(/\d+/g, 'N').slice(0, 120)}`;
    failures[key] = (failures[key] ?? 0) + 1;
    if (firstFailure.length < 5) firstFailure.push(`client ${id} ${phase}: ${msg}`);
  };
  const ids = Array.from({ length: CLIENTS }, (_, i) => i);
  const clients: (Light | null)[] = ids.map(() => null);

  // 1. Every client logs in and stays connected.
  const started = Date.now();
  await limited(ids, CONNECTING, async (id) => {
    try {
      const c = await light(p.port);
      c.socket.write(startupPacket({ user: 'scale', database: 'postgres', application_name: `scale-${id}` }));
      const welcome = await c.untilReady();
      if (!welcome.some((m) => m.type === 'K') || welcome.some((m) => m.type === 'E')) throw new Error(`login: ${describe(welcome)}`);
      clients[id] = c;
    } catch (err) {
      fail(id, 'login', err);
    }
  });
  const loginMs = Date.now() - started;
  const loggedIn = clients.filter(Boolean).length;
  const rssLoggedIn = rssMiB(p.proc.pid!);
  const connected = (JSON.parse((await scrape(p.adminPort, '/status')).body) as { services: { clients: { connected: number } }[] }).services[0].clients.connected;

  // 2. All at once: a simple query, an extended one and a transaction, each checked.
  const queriesAt = Date.now();
  let answered = 0;
  await Promise.all(
    ids.map(async (id) => {
      const c = clients[id];
      if (!c) return;
      try {
        c.socket.write(frontend('Q', `select ${id}::int, 'c${id}'::text\0`));
        expect('simple', await c.untilReady(), [[String(id), `c${id}`]]);
        c.socket.write(extended(id * 3, `e${id}`));
        expect('extended', await c.untilReady(), [[String(id * 3), `e${id}`]]);
        c.socket.write(frontend('Q', `begin; select set_config('scale.tag', 't${id}', true); select ${id}::int + 1, current_setting('scale.tag'); commit\0`));
        expect('transaction', await c.untilReady(), [[`t${id}`], [String(id + 1), `t${id}`]]);
        answered++;
      } catch (err) {
        fail(id, 'queries', err);
      }
    }),
  );
  const queriesMs = Date.now() - queriesAt;
  const rssServed = rssMiB(p.proc.pid!);

  // 3. Everybody leaves.
  await Promise.all(
    clients.map(async (c) => {
      if (!c) return;
      const gone = new Promise<void>((r) => c.socket.once('close', () => r()));
      c.socket.end(frontend('X'));
      await gone;
    }),
  );
  const wallMs = Date.now() - started;
  sampling = false;
  await sampler;
  const maxBackends = await backends.stop();

  const status = JSON.parse((await scrape(p.adminPort, '/status')).body) as {
    services: { transactions: number; rejections: Record<string, number>; serversOpened: number }[];
  };
  const svc = status.services[0];
  t.comment(
    `${CLIENTS} clients: ${loggedIn} logged in (${connected} connected at once) in ${loginMs} ms; ${answered} answered 3 checked units each in ${queriesMs} ms; ` +
      `wall ${wallMs} ms; proxy RSS ${rssLoggedIn} MiB with all logged in, ${rssServed} MiB after the queries; at most ${maxBackends} server connections in pg_stat_activity, ${maxHeld} held, ${maxWaiting} clients waiting; ` +
      `transactions ${svc.transactions}, servers opened ${svc.serversOpened}, rejections ${JSON.stringify(svc.rejections)}; failures ${JSON.stringify(failures)}`,
  );
  t.same(failures, {}, `0 failures${firstFailure.length ? ` (first: ${firstFailure.join('; ')})` : ''}`);
  t.equal(loggedIn, CLIENTS, 'every client logged in');
  t.equal(connected, CLIENTS, 'all of them connected at once');
  t.equal(answered, CLIENTS, 'every client got every answer right');
  t.ok(maxBackends <= BUDGET, `Postgres never saw more than ${BUDGET} server connections (max ${maxBackends})`);
  t.ok(maxHeld <= BUDGET, `the proxy never held more than ${BUDGET} (max ${maxHeld})`);
  t.ok(Object.values(svc.rejections).every((n) => n === 0), 'no client was rejected');
  await assertNoLeaksHttp(t, p.adminPort, 10_000);
  p.proc.kill('SIGTERM');
  t.equal(await p.exited, 0, 'the proxy shut down cleanly');
});
