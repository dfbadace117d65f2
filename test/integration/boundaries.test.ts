// Every entry point the event loop has into pgbudget is an error boundary.
// Each test here makes one of them fail on purpose (a fault injected into
// the code it runs, for one client or once) and shows what the boundary
// promises: only that peer ends (XX000 "pgbudget: internal error", logged
// once with its stack and service), its server connection is closed, its
// slot comes back, and everyone else, and the process, carry on.
import t from 'tap';
import pg from 'pg';
import { pino } from 'pino';
import { startPgbudget } from '../../src/app.js';
import { Scheduler } from '../../src/budget/scheduler.js';
import { ClientOutbound } from '../../src/client/outbound.js';
import { ClientSession } from '../../src/proxy/session.js';
import { ServerLink } from '../../src/proxy/link.js';
import { Cancels } from '../../src/proxy/cancel.js';
import { ServerPool } from '../../src/server/pool.js';
import { SessionRegistry } from '../../src/client/registry.js';
import { validateConfig } from '../../src/config/schema.js';
import { clientErrors } from '../../src/errors.js';
import { PreparedStatements } from '../../src/client/prepared.js';
import { ServerConnection } from '../../src/server/connection.js';
import { withCluster, type Cluster } from '../helpers/cluster.js';
import { assertNoLeaks, errorFields, frontend, proxyConfig, rawClient, rawConnect, simpleQuery, sleep } from '../helpers/proxy.js';
import { startupPacket } from '../helpers/wire.js';

/** The assertions the helpers below use (tap's Test has them all). */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Asserts = { same(...a: any[]): unknown; equal(...a: any[]): unknown; ok(...a: any[]): unknown };

const cluster = await withCluster(t, { maxConnections: 20, users: ['app', 'victim', 'sess'] });

const SERVICES = [
  { name: 'app', match: { user: 'app' }, budget: 2, poolMode: 'transaction', queue: { timeoutMs: 5000 } },
  { name: 'victim', match: { user: 'victim' }, budget: 2, poolMode: 'transaction', queue: { timeoutMs: 5000 } },
  { name: 'sess', match: { user: 'sess' }, budget: 2, poolMode: 'session', queue: { timeoutMs: 5000 } },
];

/** A pgbudget in this process whose error log is kept. */
async function start(cluster: Cluster, raw: Record<string, unknown> = {}) {
  const logs: Record<string, unknown>[] = [];
  const log = pino({ level: 'error' }, { write: (line: string) => void logs.push(JSON.parse(line)) });
  const app = await startPgbudget(validateConfig(proxyConfig(cluster, { services: SERVICES, ...raw })), log);
  const url = (user: string) => `postgres://${user}@127.0.0.1:${app.address.port}/postgres`;
  return { app, logs, port: app.address.port, url, stop: () => app.stop() };
}

const proxy = await start(cluster, { startupTimeoutMs: 400 });
t.teardown(() => proxy.stop());

/** Replaces obj[name] until the returned function is called; a method that is not there (renamed, moved) fails at once. */
function patch<T extends object>(obj: T, name: string, replacement: (original: (...a: unknown[]) => unknown) => (...a: unknown[]) => unknown): () => void {
  const target = obj as unknown as Record<string, (...a: unknown[]) => unknown>;
  const original = target[name];
  if (typeof original !== 'function') throw new Error(`no method ${name} to inject a fault into`);
  target[name] = replacement(original);
  return () => {
    target[name] = original;
  };
}

/**
 * Makes obj[name] throw `message` on its first call only; calls() counts
 * every call. Restored at teardown.
 */
function failFirst(t: { teardown(fn: () => void): void }, obj: object, name: string, message: string): { calls(): number; restore(): void } {
  let calls = 0;
  const restore = patch(obj, name, (original) =>
    function (this: unknown, ...args: unknown[]) {
      if (calls++ === 0) throw new Error(message);
      return original.apply(this, args);
    },
  );
  t.teardown(restore);
  return { calls: () => calls, restore };
}

/** A bystander on another service, inside a transaction while the fault happens; checked after. */
async function bystander() {
  const c = new pg.Client({ connectionString: proxy.url('app') });
  await c.connect();
  await c.query('begin');
  await c.query('select 1');
  return {
    async check(t: Asserts) {
      t.same((await c.query('select 2 as n')).rows, [{ n: 2 }], 'the bystander inside its transaction did not notice');
      await c.query('commit');
      await c.end();
    },
  };
}

async function internalErrorFor(client: ReturnType<typeof rawClient>) {
  await client.closed;
  const e = client.messages.find((m) => m.type === 'E');
  return e ? errorFields(frontend('E', e.body)) : null;
}

function servesOn(t: Asserts, user: string) {
  return (async () => {
    const c = new pg.Client({ connectionString: proxy.url(user) });
    await c.connect();
    t.same((await c.query('select 9 as n')).rows, [{ n: 9 }], `${user}: served afterwards`);
    await c.end();
  })();
}

function loggedOnce(t: Asserts, where: string) {
  const hits = proxy.logs.filter((l) => l.where === where);
  t.equal(hits.length, 1, `logged once (${where})`);
  const err = hits[0]?.err as { stack?: string } | undefined;
  t.ok(err?.stack?.includes('injected'), 'with its stack');
  t.equal(hits[0]?.service, 'victim', 'and its service');
}

const serversClosed = () => proxy.app.proxy.snapshot().services.find((s) => s.name === 'victim')!.serversClosed;

t.test('a failure while reading a client message ends that client only, with XX000', async (t) => {
  const other = await bystander();
  const restore = patch(PreparedStatements.prototype, 'rewrite', (original) =>
    function (this: unknown, ...args: unknown[]) {
      const msg = args[0] as Buffer;
      if (msg.includes('injected-client')) throw new Error('injected fault in a client read');
      return original.apply(this, args);
    },
  );
  t.teardown(restore);
  const closedBefore = serversClosed();
  const victim = rawClient(proxy.port);
  await victim.login('victim');
  victim.socket.write(simpleQuery('begin'));
  await victim.until(() => victim.count('Z') === 2);
  victim.socket.write(simpleQuery("select 'injected-client'"));
  const fields = await internalErrorFor(victim);
  t.same([fields?.S, fields?.C, fields?.M], ['FATAL', 'XX000', 'pgbudget: internal error']);
  loggedOnce(t, 'client read');
  await other.check(t);
  await assertNoLeaks(t, proxy.app);
  // The count moves once the socket has closed, which may be just after its slot is no longer in use.
  const deadline = Date.now() + 3000;
  while (serversClosed() < closedBefore + 1 && Date.now() < deadline) await sleep(10);
  t.equal(serversClosed(), closedBefore + 1, 'its server connection (state unknown) was closed, not reused');
  restore();
  await servesOn(t, 'victim');
});

t.test('a failure while reading the server reply ends that client only, with XX000', async (t) => {
  const other = await bystander();
  // Reply handling has no notion of the user: the fault fires on the victim's own row.
  const restore = patch(ClientOutbound.prototype, 'onReply', (original) =>
    function (this: ClientOutbound, ...args: unknown[]) {
      if (args[0] === 0x44 && (args[2] as Buffer).includes('victim-row')) throw new Error('injected fault in a server read');
      return original.apply(this, args);
    },
  );
  t.teardown(restore);
  const victim = rawClient(proxy.port);
  await victim.login('victim');
  victim.socket.write(simpleQuery("select 'victim-row'"));
  const fields = await internalErrorFor(victim);
  t.same([fields?.C, fields?.M], ['XX000', 'pgbudget: internal error']);
  loggedOnce(t, 'server read');
  await other.check(t);
  await assertNoLeaks(t, proxy.app);
  restore();
  await servesOn(t, 'victim');
});

t.test('a failure when the pool hands a server connection over ends that client only', async (t) => {
  const restore = patch(ServerLink.prototype, 'attach', (original) =>
    function (this: ServerLink, ...args: unknown[]) {
      if ((this as unknown as { service: { name: string } }).service.name === 'victim') throw new Error('injected fault in a hand-out');
      return original.apply(this, args);
    },
  );
  t.teardown(restore);
  const other = await bystander();
  const victim = rawClient(proxy.port);
  await victim.login('victim');
  victim.socket.write(simpleQuery('select 1'));
  const fields = await internalErrorFor(victim);
  t.same([fields?.C, fields?.M], ['XX000', 'pgbudget: internal error']);
  loggedOnce(t, 'server hand-out');
  await other.check(t);
  await assertNoLeaks(t, proxy.app);
  restore();
  await servesOn(t, 'victim');
});

t.test('a failure in the promise continuation of a server login closes that connection; its waiter is served by another', async (t) => {
  const fault = failFirst(t, Scheduler.prototype, 'opened', 'injected fault after a login');
  // A pool key nobody used: its first client waits for a login.
  const c = new pg.Client({ connectionString: proxy.url('victim'), options: '-c search_path=public,after_login' });
  await c.connect();
  t.same((await c.query('select 1 as n')).rows, [{ n: 1 }], 'the waiting client got a server connection all the same');
  await c.end();
  t.equal(fault.calls() >= 2, true, 'a second login was made');
  t.equal(proxy.logs.filter((l) => l.where === 'server login').length, 1, 'the failure was logged');
  await assertNoLeaks(t, proxy.app);
});

t.test('a failure in the pool sweep is logged and the next sweep runs', async (t) => {
  const fault = failFirst(t, Scheduler.prototype, 'sweep', 'injected fault in the sweep');
  await sleep(200);
  t.equal(proxy.logs.filter((l) => l.where === 'sweep').length, 1, 'logged once');
  t.ok(fault.calls() > 2, 'the sweep went on');
  await servesOn(t, 'app');
});

t.test('a failure in the timeout sweep ends that client only', async (t) => {
  const restore = patch(clientErrors, 'startupTimeout', () => () => {
    throw new Error('injected fault in the startup sweep');
  });
  t.teardown(restore);
  const { closed, received } = await rawConnect(proxy.port);
  await closed;
  t.same(errorFields(received())?.C, 'XX000', 'the silent client got XX000 once its deadline passed');
  const hits = proxy.logs.filter((l) => l.where === 'timeout sweep');
  t.equal(hits.length, 1, 'logged once');
  restore();
  await servesOn(t, 'app');
});

t.test('a failure in a reset after a session-mode client leaves closes that server connection, and frees its slot', async (t) => {
  const c = new pg.Client({ connectionString: proxy.url('sess') });
  await c.connect();
  await c.query('select 1');
  // The first release from here on is the one after the reset (DISCARD ALL) succeeded.
  const fault = failFirst(t, ServerPool.prototype, 'release', 'injected fault after a reset');
  await c.end();
  await sleep(100);
  t.equal(fault.calls(), 1, 'the fault fired');
  t.ok(proxy.logs.some((l) => String(l.msg).includes('after a reset')), 'logged');
  await assertNoLeaks(t, proxy.app);
  fault.restore();
  await servesOn(t, 'sess');
});

t.test('a failure while reading a server login closes that server connection; the client is served by the next one', async (t) => {
  const fault = failFirst(t, ServerConnection.prototype, 'onControlData', 'injected fault in a login read');
  const c = new pg.Client({ connectionString: proxy.url('victim'), options: '-c search_path=public,login_read' });
  await c.connect();
  t.same((await c.query('select 1 as n')).rows, [{ n: 1 }]);
  await c.end();
  t.ok(fault.calls() >= 2, 'a second login was made');
  await assertNoLeaks(t, proxy.app);
});

t.test('a failure when accepting a connection closes that connection only', async (t) => {
  failFirst(t, SessionRegistry.prototype, 'nextProcessId', 'injected fault in accept');
  const { closed, socket } = await rawConnect(proxy.port);
  socket.write(startupPacket({ user: 'app' }));
  await closed;
  t.ok(proxy.logs.some((l) => String(l.msg).includes('could not start a client session')), 'logged');
  await servesOn(t, 'app');
});

t.test('a failure while handling a cancel request ends the session it named, nobody else', async (t) => {
  const restore = patch(Cancels.prototype, 'request', () => () => {
    throw new Error('injected fault in a cancel');
  });
  t.teardown(restore);
  const other = await bystander();
  const victim = new pg.Client({ connectionString: proxy.url('victim') });
  const errors: string[] = [];
  victim.on('error', (e) => errors.push(e.message));
  await victim.connect();
  const query = victim.query('select pg_sleep(5)').catch((e: Error) => errors.push(e.message));
  await sleep(100);
  // node-postgres has no cancel of its own: a CancelRequest with the victim's key, by hand.
  const key = (victim as unknown as { processID: number; secretKey: number });
  const cancel = Buffer.alloc(16);
  cancel.writeInt32BE(16, 0);
  cancel.writeInt32BE(80877102, 4);
  cancel.writeInt32BE(key.processID, 8);
  cancel.writeInt32BE(key.secretKey, 12);
  const c = await rawConnect(proxy.port);
  c.socket.write(cancel);
  await c.closed;
  await query;
  t.match(errors.join('; '), /pgbudget: internal error/, 'the named session ended with XX000');
  loggedOnce(t, 'cancel request');
  await other.check(t);
  await assertNoLeaks(t, proxy.app);
  restore();
  await servesOn(t, 'victim');
});

t.test('a reload that fails halfway keeps the running config', async (t) => {
  const running = proxy.app.proxy.currentConfig;
  const restore = patch(proxy.app.proxy.pool, 'applyConfig', (original) => {
    let calls = 0;
    return function (this: unknown, ...args: unknown[]) {
      if (calls++ === 0) throw new Error('injected fault in a reload');
      return original.apply(this, args);
    };
  });
  t.teardown(restore);
  const next = validateConfig(proxyConfig(cluster, { services: SERVICES.map((s) => ({ ...s, budget: 1 })) }));
  t.throws(() => proxy.app.proxy.reload(next), /reload failed, running config kept: injected fault in a reload/);
  t.equal(proxy.app.proxy.currentConfig, running, 'the running config stays');
  t.same(proxy.app.proxy.snapshot().services.map((s) => s.budget), [2, 2, 2], 'and its budgets');
  restore();
  await servesOn(t, 'app');
});

t.test('a failure while one session shuts down does not stop the shutdown of the rest', async (t) => {
  const own = await start(cluster);
  const restore = patch(ClientSession.prototype, 'endForShutdown', (original) =>
    function (this: ClientSession, ...args: unknown[]) {
      if (this.user === 'victim') throw new Error('injected fault in a shutdown');
      return original.apply(this, args);
    },
  );
  t.teardown(restore);
  const victim = rawClient(own.port);
  await victim.login('victim');
  const other = rawClient(own.port);
  await other.login('app');
  await own.stop();
  const fields = await internalErrorFor(victim);
  t.equal(fields?.C, 'XX000', 'the failing session ended with XX000');
  await other.closed;
  const e = other.messages.find((m) => m.type === 'E');
  t.equal(e && errorFields(frontend('E', e.body))?.C, '57P01', 'the other got 57P01 as usual');
  t.equal(own.logs.filter((l) => l.where === 'shutdown').length, 1, 'logged once');
});
