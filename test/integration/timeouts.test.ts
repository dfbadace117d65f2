// Timeouts that free a slot: a client idle inside a transaction, a client
// idle outside one, a statement that runs too long, and TCP keepalive on
// both sides. Each ends with PostgreSQL's own error, as the server's own
// timeout would, and the budget slot comes back.
import t from 'tap';
import pg from 'pg';
import { withCluster } from '../helpers/cluster.js';
import { assertNoLeaks, errorFields, frontend, metric, rawClient, run, scrape, sleep, startProxy } from '../helpers/proxy.js';

const cluster = await withCluster(t, { maxConnections: 20, users: ['tx', 'sess', 'lax'] });
await cluster.query('create table if not exists marks (who text)');
await cluster.query('grant all on marks to public');

const proxy = await startProxy(t, cluster, {
  serverApplicationName: 'client',
  idleInTransactionTimeoutMs: 400,
  clientIdleTimeoutMs: 1500,
  queryTimeoutMs: 500,
  tcpKeepaliveMs: 2000,
  services: [
    { name: 'tx', match: { user: 'tx' }, budget: 1, poolMode: 'transaction', queue: { timeoutMs: 10_000 } },
    { name: 'sess', match: { user: 'sess' }, budget: 1, poolMode: 'session', queue: { timeoutMs: 10_000 } },
    // Its own values override the global ones: no idle-in-transaction limit, a longer query limit.
    { name: 'lax', match: { user: 'lax' }, budget: 1, poolMode: 'transaction', idleInTransactionTimeoutMs: 0, queryTimeoutMs: 3000 },
  ],
});

type PgError = Error & { code?: string; severity?: string };

async function connect(user: string): Promise<{ c: pg.Client; errors: PgError[]; ended: Promise<void> }> {
  const c = new pg.Client({ connectionString: proxy.url(user) });
  const errors: PgError[] = [];
  c.on('error', (e: PgError) => errors.push(e));
  const ended = new Promise<void>((r) => c.on('end', () => r()));
  await c.connect();
  return { c, errors, ended };
}

for (const user of ['tx', 'sess']) {
  t.test(`${user === 'tx' ? 'transaction' : 'session'} mode: idle in a transaction ends with 25P03, rolls back and frees the slot`, async (t) => {
    const { c, errors, ended } = await connect(user);
    await c.query('begin');
    await c.query(`insert into marks values ('${user}-idle-tx')`);
    const started = Date.now();
    await ended;
    const waited = Date.now() - started;
    t.ok(waited >= 400 && waited < 2000, `closed after ${waited} ms (limit 400, sweep 100)`);
    t.match(errors[0], { code: '25P03', severity: 'FATAL', message: 'terminating connection due to idle-in-transaction timeout' });
    // The slot (budget 1) is free: the next client gets a server connection at once.
    const next = await connect(user);
    t.same((await next.c.query('select 1 as n')).rows, [{ n: 1 }]);
    await next.c.end();
    const rows = await cluster.query(`select count(*)::int as n from marks where who = '${user}-idle-tx'`);
    t.equal(rows[0].n, 0, 'the transaction was rolled back');
    const { body } = await scrape(proxy.adminAddress.port);
    t.ok((metric(body, `pgbudget_rejections_total{service="${user}",reason="idle_in_transaction_timeout"}`) ?? 0) >= 1, 'counted');
    await assertNoLeaks(t, proxy);
  });
}

t.test('an extended batch left without its Sync holds a server connection: idle in a transaction too', async (t) => {
  const c = rawClient(proxy.port);
  await c.login('tx');
  // Parse, Bind, Execute and Flush: the server answers, then waits for a Sync that never comes.
  c.socket.write(
    Buffer.concat([
      frontend('P', '\0select 1\0\0\0'),
      frontend('B', '\0\0\0\0\0\0\0\0'),
      frontend('E', '\0\0\0\0\0'),
      frontend('H'),
    ]),
  );
  await c.until(() => c.count('C') === 1);
  const started = Date.now();
  await c.closed;
  t.ok(Date.now() - started >= 350, 'closed after the limit');
  const e = c.messages.find((m) => m.type === 'E');
  t.match(errorFields(frontend('E', e!.body)), { C: '25P03', S: 'FATAL' });
  await assertNoLeaks(t, proxy);
});

t.test('a client that keeps working inside its transaction is not idle', async (t) => {
  const { c, errors } = await connect('tx');
  await c.query('begin');
  for (let i = 0; i < 8; i++) {
    await sleep(150);
    await c.query('select 1');
  }
  // A statement longer than the idle limit but shorter than the query limit: the server's turn, not idle.
  await c.query('select pg_sleep(0.45)');
  await c.query('commit');
  t.same(errors, []);
  await c.end();
});

t.test('a service with idleInTransactionTimeoutMs 0 keeps an idle transaction open', async (t) => {
  const { c, errors } = await connect('lax');
  await c.query('begin');
  await sleep(900);
  t.same((await c.query('select 2 as n')).rows, [{ n: 2 }]);
  await c.query('commit');
  t.same(errors, []);
  await c.end();
});

for (const user of ['tx', 'sess']) {
  t.test(`${user === 'tx' ? 'transaction' : 'session'} mode: idle outside a transaction ends with 57P05`, async (t) => {
    const { c, errors, ended } = await connect(user);
    await c.query('select 1');
    const started = Date.now();
    await ended;
    const waited = Date.now() - started;
    t.ok(waited >= 1500 && waited < 3500, `closed after ${waited} ms (limit 1500)`);
    t.match(errors[0], { code: '57P05', severity: 'FATAL', message: 'terminating connection due to idle-session timeout' });
    await assertNoLeaks(t, proxy);
  });
}

for (const user of ['tx', 'sess']) {
  t.test(`${user === 'tx' ? 'transaction' : 'session'} mode: a statement over queryTimeoutMs is cancelled with 57014, as statement_timeout`, async (t) => {
    const { c } = await connect(user);
    const started = Date.now();
    const err = (await c.query('select pg_sleep(5)').catch((e: PgError) => e)) as PgError;
    const took = Date.now() - started;
    t.match(err, { code: '57014', severity: 'ERROR', message: 'canceling statement due to statement timeout' });
    t.ok(took >= 500 && took < 2500, `cancelled after ${took} ms (limit 500)`);
    t.same((await c.query('select 3 as n')).rows, [{ n: 3 }], 'the client goes on');
    // Inside a transaction the cancel fails the transaction, as statement_timeout does.
    await c.query('begin');
    const inTx = (await c.query('select pg_sleep(5)').catch((e: PgError) => e)) as PgError;
    t.equal(inTx.code, '57014');
    const aborted = (await c.query('select 1').catch((e: PgError) => e)) as PgError;
    t.equal(aborted.code, '25P02', 'the transaction is aborted');
    await c.query('rollback');
    // The extended protocol too.
    const ext = (await c.query({ text: 'select pg_sleep($1)', values: [5] }).catch((e: PgError) => e)) as PgError;
    t.match(ext, { code: '57014', message: 'canceling statement due to statement timeout' });
    t.same((await c.query({ text: 'select $1::int as n', values: [4] })).rows, [{ n: 4 }]);
    await c.end();
    const { body } = await scrape(proxy.adminAddress.port);
    t.equal(metric(body, `pgbudget_query_timeouts_total{service="${user}"}`), 3, 'each counted');
    await assertNoLeaks(t, proxy);
  });
}

t.test('time spent in the queue does not count against queryTimeoutMs; a per-service limit applies', async (t) => {
  const holder = await connect('lax');
  await holder.c.query('begin');
  const { c } = await connect('lax');
  // Queued behind the holder for 1.2 s (budget 1), then runs 1 s: within lax's 3 s, over the global 0.5 s.
  const pending = c.query('select pg_sleep(1) as slept');
  await sleep(1200);
  await holder.c.query('commit');
  t.same((await pending).rows, [{ slept: '' }], 'ran to the end');
  const err = (await c.query('select pg_sleep(10)').catch((e: PgError) => e)) as PgError;
  t.equal(err.code, '57014', "lax's own limit of 3 s still applies");
  await holder.c.end();
  await c.end();
  await assertNoLeaks(t, proxy);
});

t.test('TCP keepalive is on for client and server sockets', async (t) => {
  const { c } = await connect('sess');
  await c.query('select 1');
  // ss shows a keepalive timer on a socket with SO_KEEPALIVE set, once no
  // retransmission timer (unacknowledged bytes) takes its place.
  const timers = async (filter: string) => {
    let out = '';
    for (let i = 0; i < 20 && !/timer:\(keepalive,/.test(out); i++) {
      await sleep(50);
      out = (await run('ss', ['-tnoH', 'state', 'established', filter])).stdout;
    }
    return out;
  };
  t.match(await timers(`( sport = :${proxy.port} )`), /timer:\(keepalive,/, 'on the accepted client socket');
  t.match(await timers(`( dport = :${cluster.port} )`), /timer:\(keepalive,/, 'on the server connection');
  await c.end();
});
