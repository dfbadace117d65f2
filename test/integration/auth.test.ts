// Client authentication through pgbudget, with real clients against a real
// PostgreSQL whose roles need SCRAM-SHA-256 or md5: the right password gets
// in, a wrong or unknown one gets PostgreSQL's own 28P01, a stalled client
// is closed, and the server connections of an authenticated role open with
// the client's own password (auth.users), md5 hash or SCRAM key (auth.file
// holds only what pg_authid holds), none in any service's config.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import pg from 'pg';
import postgres from 'postgres';
import { withCluster } from '../helpers/cluster.js';
import { assertNoLeaks, psql, rawClient, run, sleep, startProxy } from '../helpers/proxy.js';
import { startupPacket } from '../helpers/wire.js';

const cluster = await withCluster(t, {
  maxConnections: 20,
  passwordUsers: [
    { name: 'scram_u', password: 'scram-pw', method: 'scram-sha-256' },
    { name: 'md5_u', password: 'md5-pw', method: 'md5' },
    { name: 'ver_u', password: 'ver-pw', method: 'scram-sha-256' },
  ],
  users: ['open_u', 'lim_u'],
});

// What PostgreSQL stores: md5_u's md5 hash and ver_u's SCRAM verifier go to a userlist.txt as they are.
const stored = await cluster.query<{ rolname: string; rolpassword: string }>(
  "select rolname, rolpassword from pg_authid where rolname in ('md5_u', 'ver_u')",
);
const dir = await mkdtemp(path.join(os.tmpdir(), 'pgbudget-auth-'));
t.teardown(() => rm(dir, { recursive: true, force: true }));
const userlist = path.join(dir, 'userlist.txt');
await writeFile(userlist, ['; from pg_authid', ...stored.map((r) => `"${r.rolname}" "${r.rolpassword}"`), ''].join('\n'));

const proxy = await startProxy(t, cluster, {
  authTimeoutMs: 500,
  auth: { method: 'scram-sha-256', users: [{ name: 'scram_u', password: 'scram-pw' }], file: userlist },
  services: [
    { name: 'scram', match: { user: 'scram_u' }, budget: 2, poolMode: 'transaction' },
    { name: 'md5', match: { user: 'md5_u' }, budget: 2, poolMode: 'transaction', auth: { method: 'md5' } },
    // Only a verifier: server connections log in with the ClientKey the client's proof revealed.
    { name: 'ver', match: { user: 'ver_u' }, budget: 2, poolMode: 'transaction' },
    { name: 'open', match: { user: 'open_u' }, budget: 1, auth: { method: 'trust' } },
    { name: 'limited', match: { user: 'lim_u' }, budget: 1, poolMode: 'transaction', auth: { method: 'trust' }, maxClients: 2 },
  ],
  defaultService: 'scram',
});

const url = (user: string, password?: string) =>
  `postgres://${user}${password === undefined ? '' : `:${encodeURIComponent(password)}`}@127.0.0.1:${proxy.port}/postgres`;

async function pgLogin(user: string, password: string): Promise<string> {
  const c = new pg.Client({ connectionString: url(user, password) });
  try {
    await c.connect();
    const { rows } = await c.query('select current_user as u');
    return `ok ${rows[0].u}`;
  } catch (err) {
    const e = err as { code?: string; message: string };
    return `${e.code} ${e.message}`;
  } finally {
    await c.end().catch(() => {});
  }
}

async function postgresJsLogin(user: string, password: string): Promise<string> {
  const sql = postgres(url(user, password), { max: 1, onnotice: () => {}, connect_timeout: 10 });
  try {
    const [row] = await sql`select current_user as u`;
    return `ok ${row.u}`;
  } catch (err) {
    const e = err as { code?: string; message: string };
    return `${e.code} ${e.message}`;
  } finally {
    await sql.end({ timeout: 1 }).catch(() => {});
  }
}

t.test('node-postgres and postgres.js: right passwords in, wrong and unknown ones refused with 28P01', async (t) => {
  for (const [name, login] of [
    ['node-postgres', pgLogin],
    ['postgres.js', postgresJsLogin],
  ] as const) {
    t.equal(await login('scram_u', 'scram-pw'), 'ok scram_u', `${name}: SCRAM, password from auth.users`);
    t.equal(await login('md5_u', 'md5-pw'), 'ok md5_u', `${name}: md5, hash from auth.file`);
    t.equal(await login('ver_u', 'ver-pw'), 'ok ver_u', `${name}: SCRAM against a verifier from auth.file`);
    t.equal(await login('scram_u', 'nope'), '28P01 password authentication failed for user "scram_u"', `${name}: wrong SCRAM password`);
    t.equal(await login('md5_u', 'nope'), '28P01 password authentication failed for user "md5_u"', `${name}: wrong md5 password`);
    t.equal(await login('ghost', 'x'), '28P01 password authentication failed for user "ghost"', `${name}: unknown user, same words`);
  }
  await assertNoLeaks(t, proxy);
});

t.test('psql: the same, with the text it prints', async (t) => {
  const ok = await psql(url('scram_u'), 'select current_user', { env: { PGPASSWORD: 'scram-pw' } });
  t.equal(ok.stdout.trim(), 'scram_u', 'SCRAM');
  const md5 = await psql(url('md5_u'), 'select current_user', { env: { PGPASSWORD: 'md5-pw' } });
  t.equal(md5.stdout.trim(), 'md5_u', 'md5');
  for (const user of ['scram_u', 'md5_u']) {
    const bad = await psql(url(user), 'select 1', { env: { PGPASSWORD: 'wrong' } });
    t.not(bad.code, 0, `${user}: wrong password fails`);
    t.match(bad.stderr, `FATAL:  password authentication failed for user "${user}"`, `${user}: psql prints PostgreSQL's words`);
  }
  // -w: never prompt; libpq gives up when the proxy asks for a password it has none of.
  const none = await run('psql', ['-X', '-w', '-d', url('scram_u'), '-c', 'select 1'], { env: { PGPASSWORD: '' } });
  t.match(none.stderr, 'fe_sendauth: no password supplied', 'no password: refused by libpq itself, as with PostgreSQL');
  const trusted = await psql(url('open_u'), 'select current_user');
  t.equal(trusted.stdout.trim(), 'open_u', 'a service that trusts asks for nothing');
});

/** Server backends of `user` while `n` of its clients each run a statement at once. */
async function backendsUnderLoad(user: string, password: string, n: number): Promise<number> {
  const clients = Array.from({ length: n }, () => new pg.Client({ connectionString: url(user, password) }));
  await Promise.all(clients.map((c) => c.connect()));
  await Promise.all(clients.map((c) => c.query('select pg_sleep(0.3)')));
  const [row] = await cluster.query<{ n: string }>('select count(*) as n from pg_stat_activity where usename = $1', [user]);
  await Promise.all(clients.map((c) => c.end()));
  return Number(row.n);
}

t.test('transaction mode: a pool of server connections opens with the client password alone', async (t) => {
  t.equal(await backendsUnderLoad('scram_u', 'scram-pw', 4), 2, 'both server connections of the budget logged in as scram_u (SCRAM), no password in any service');
  t.equal(await backendsUnderLoad('md5_u', 'md5-pw', 3), 2, 'md5_u logs in to the server with the stored hash from auth.file');
  t.equal(await backendsUnderLoad('ver_u', 'ver-pw', 3), 2, "ver_u logs in to the server with its client's SCRAM key: no password anywhere");
  await assertNoLeaks(t, proxy);
});

t.test('a client that never answers the password request is closed after authTimeoutMs, and takes no slot', async (t) => {
  const c = rawClient(proxy.port);
  c.socket.write(startupPacket({ user: 'scram_u', database: 'postgres' }));
  await c.until(() => c.count('R') === 1);
  t.equal(c.messages[0].body.readInt32BE(0), 10, 'AuthenticationSASL');
  await c.until(() => c.count('E') === 1, 3000);
  const e = c.messages.find((m) => m.type === 'E')!.body.toString('latin1');
  t.match(e, /C08P01\0/);
  t.match(e, /authentication not completed within 500 ms/);
  await c.closed;
  const snap = proxy.proxy.snapshot().services.find((s) => s.name === 'scram')!;
  t.equal(snap.serverConnections.active + snap.clients.waiting, 0, 'no slot, no place in the queue');
  t.ok(snap.rejections.auth_timeout >= 1, 'counted as auth_timeout');
});

t.test('a message other than the password answer is a protocol violation, and the proxy stays up', async (t) => {
  const c = rawClient(proxy.port);
  c.socket.write(startupPacket({ user: 'scram_u', database: 'postgres' }));
  await c.until(() => c.count('R') === 1);
  c.socket.write(Buffer.from('Q\0\0\0\x0dselect 1\0', 'latin1'));
  await c.until(() => c.count('E') === 1);
  t.match(c.messages.find((m) => m.type === 'E')!.body.toString('latin1'), /expected SASL response, got message type 81/);
  await c.closed;
  await sleep(10);
  t.equal(await pgLogin('scram_u', 'scram-pw'), 'ok scram_u', 'others still get in');
});

t.test('maxClients: per service, then in total, refused with PostgreSQL\'s words and the limit named', async (t) => {
  const connect = async (port: number, user: string) => {
    const c = new pg.Client({ connectionString: `postgres://${user}@127.0.0.1:${port}/postgres` });
    try {
      await c.connect();
      return { c, error: null };
    } catch (err) {
      return { c, error: err as { code?: string; message: string; detail?: string } };
    }
  };
  const a = await connect(proxy.port, 'lim_u');
  const b = await connect(proxy.port, 'lim_u');
  const third = await connect(proxy.port, 'lim_u');
  t.same([a.error, b.error], [null, null], 'two clients of the service get in');
  t.same(
    [third.error?.code, third.error?.message, third.error?.detail],
    ['53300', 'sorry, too many clients already', 'pgbudget: service "limited" has its maxClients 2 clients'],
  );
  t.equal(await pgLogin('scram_u', 'scram-pw'), 'ok scram_u', 'other services are not affected');
  await a.c.end();
  await sleep(50);
  const again = await connect(proxy.port, 'lim_u');
  t.equal(again.error, null, 'a place freed is taken again');
  await Promise.all([b.c.end(), again.c.end()]);

  const small = await startProxy(t, cluster, { maxClients: 3, services: [{ name: 'open', match: {}, budget: 1 }] });
  const held = [rawClient(small.port), rawClient(small.port), rawClient(small.port)]; // connected, no startup yet: they count
  await sleep(100);
  const over = await connect(small.port, 'open_u');
  t.same([over.error?.code, over.error?.message, over.error?.detail], ['53300', 'sorry, too many clients already', 'pgbudget: maxClients 3 reached']);
  held[0].socket.destroy();
  await sleep(100);
  const fits = await connect(small.port, 'open_u');
  t.equal(fits.error, null, 'in again once one has left');
  await fits.c.end();
  for (const h of held) h.socket.destroy();
});
