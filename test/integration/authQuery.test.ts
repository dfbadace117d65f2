// auth.query: passwords looked up in the database itself through a
// least-privileged role and a SECURITY DEFINER function, as the README
// shows: SCRAM and md5 roles, a SASLprep password, a role without a
// password and an expired one, the cache, a lookup that fails, and a pool
// of server connections that opens with no password anywhere in the config.
import t from 'tap';
import pg from 'pg';
import { createLookupFunction, LOOKUP_SQL } from '../helpers/authQuery.js';
import { withCluster } from '../helpers/cluster.js';
import { assertNoLeaks, psql, sleep, startProxy, type TestProxy } from '../helpers/proxy.js';

const cluster = await withCluster(t, {
  maxConnections: 20,
  passwordUsers: [
    { name: 'lookup_u', password: 'lookup-pw', method: 'scram-sha-256' },
    { name: 'scram_u', password: 'scram-pw', method: 'scram-sha-256' },
    { name: 'md5_u', password: 'md5-pw', method: 'md5' },
    // SASLprep maps ROMAN NUMERAL NINE to "IX": libpq and PostgreSQL both apply it.
    { name: 'prep_u', password: 'IX-Ⅸ', method: 'scram-sha-256' },
    { name: 'expired_u', password: 'expired-pw', method: 'scram-sha-256' },
    { name: 'nopw_u', password: 'unused', method: 'scram-sha-256' },
  ],
});
await cluster.query(`ALTER ROLE expired_u VALID UNTIL '2001-01-01'`);
await cluster.query('ALTER ROLE nopw_u PASSWORD NULL');
// The README's lookup: a function that reads pg_authid for whoever may execute it, and a role that may do nothing else.
await createLookupFunction(cluster, 'lookup_u');

const services = [
  { name: 'scram', match: { user: ['scram_u', 'prep_u', 'expired_u', 'nopw_u', 'nobody_u'] }, budget: 3, poolMode: 'transaction', queue: { timeoutMs: 5000 } },
  { name: 'md5', match: { user: 'md5_u' }, budget: 2, poolMode: 'transaction', auth: { method: 'md5' } },
];
process.env.PGBUDGET_TEST_LOOKUP_PW = 'lookup-pw';
const query = { user: 'lookup_u', passwordEnv: 'PGBUDGET_TEST_LOOKUP_PW', sql: LOOKUP_SQL, cacheMs: 300 };
// No password of any client role in here: only the lookup role's, from the environment.
const proxy = await startProxy(t, cluster, { auth: { method: 'scram-sha-256', query }, services, upstream: { maxConnections: 6 } });

const conn = (p: TestProxy, user: string) => `host=127.0.0.1 port=${p.port} dbname=postgres user=${user}`;
async function login(p: TestProxy, user: string, password: string) {
  return psql(conn(p, user), 'select current_user', { env: { PGPASSWORD: password } });
}
const failedFor = (user: string) => `FATAL:  password authentication failed for user "${user}"`;

t.test('SCRAM, md5 and SASLprep roles log in with their own passwords, and only with them', async (t) => {
  for (const [user, password] of [
    ['scram_u', 'scram-pw'],
    ['md5_u', 'md5-pw'],
    ['prep_u', 'IX-Ⅸ'],
  ]) {
    const ok = await login(proxy, user, password);
    t.equal(ok.stdout.trim(), user, `${user}: the right password (${ok.stderr.trim()})`);
    const wrong = await login(proxy, user, password + 'x');
    t.not(wrong.code, 0);
    t.match(wrong.stderr, failedFor(user), `${user}: a wrong password, in PostgreSQL's words`);
  }
  // "IX-IX" is what SASLprep makes of "IX-Ⅸ": the same password to PostgreSQL.
  t.equal((await login(proxy, 'prep_u', 'IX-IX')).stdout.trim(), 'prep_u', 'the normalised form is the same password');
});

t.test('no password, an expired password, and an unknown role: refused as PostgreSQL refuses them', async (t) => {
  for (const [user, password] of [
    ['nopw_u', 'unused'],
    ['expired_u', 'expired-pw'],
    ['nobody_u', 'whatever'],
  ]) {
    const r = await login(proxy, user, password);
    t.not(r.code, 0);
    t.match(r.stderr, failedFor(user), `${user}: 28P01`);
  }
  // The same expired role directly: PostgreSQL says the same.
  const direct = await psql(`host=127.0.0.1 port=${cluster.port} dbname=postgres user=expired_u`, 'select 1', { env: { PGPASSWORD: 'expired-pw' } });
  t.match(direct.stderr, failedFor('expired_u'), 'PostgreSQL refuses it in the same words');
});

t.test('a pool of several server connections opens for a SCRAM role with no password in the config', async (t) => {
  const clients = await Promise.all(
    Array.from({ length: 6 }, async () => {
      const c = new pg.Client({ host: '127.0.0.1', port: proxy.port, user: 'scram_u', password: 'scram-pw', database: 'postgres' });
      await c.connect();
      return c;
    }),
  );
  // Hold three transactions open at once: three server connections for scram_u.
  const held = clients.slice(0, 3);
  await Promise.all(held.map((c) => c.query('begin; select 1')));
  const servers = await cluster.query<{ n: string }>(`select count(*) as n from pg_stat_activity where usename = 'scram_u' and backend_type = 'client backend'`);
  t.equal(Number(servers[0].n), 3, 'three server connections logged in as scram_u with the ClientKey a client proved');
  await Promise.all(held.map((c) => c.query('commit')));
  const rows = await Promise.all(clients.map((c) => c.query('select current_user as u')));
  t.same(
    rows.map((r) => r.rows[0].u),
    Array(6).fill('scram_u'),
  );
  const md5 = new pg.Client({ host: '127.0.0.1', port: proxy.port, user: 'md5_u', password: 'md5-pw', database: 'postgres' });
  await md5.connect();
  t.equal((await md5.query('select current_user as u')).rows[0].u, 'md5_u', 'an md5 role logs in to the server with its stored hash');
  await md5.end();
  await Promise.all(clients.map((c) => c.end()));
  const snap = proxy.proxy.snapshot();
  const lookup = snap.services.find((s) => s.name === 'pgbudget:auth_query');
  t.ok(lookup, 'the lookup is a service of its own in /status');
  t.equal(lookup!.budget, 1);
  const total = snap.services.reduce((n, s) => n + s.serverConnections.active + s.serverConnections.idle + s.serverConnections.opening, 0);
  t.ok(total <= 6, `the lookup's connection is under the cap with the others (${total} of 6)`);
  await assertNoLeaks(t, proxy);
});

t.test('answers are cached for cacheMs, then asked again: a changed password takes over', async (t) => {
  t.equal((await login(proxy, 'scram_u', 'scram-pw')).stdout.trim(), 'scram_u');
  await cluster.query(`ALTER ROLE scram_u PASSWORD 'changed-pw'`);
  await sleep(400);
  t.match((await login(proxy, 'scram_u', 'scram-pw')).stderr, failedFor('scram_u'), 'the old password no longer works once the cache has expired');
  const fresh = await login(proxy, 'scram_u', 'changed-pw');
  t.equal(fresh.stdout.trim(), 'scram_u', `the new one does (${fresh.stderr.trim()})`);
  await cluster.query(`ALTER ROLE scram_u PASSWORD 'scram-pw'`);
  await sleep(400);
});

t.test('many clients of one role at once: one lookup, everyone in', async (t) => {
  await sleep(400); // past the cache
  const results = await Promise.all(Array.from({ length: 12 }, () => login(proxy, 'prep_u', 'IX-Ⅸ')));
  t.same(
    results.map((r) => r.stdout.trim()),
    Array(12).fill('prep_u'),
  );
});

t.test('a lookup that cannot run: the client gets a clear error at once, nobody else notices', async (t) => {
  process.env.PGBUDGET_TEST_BAD_LOOKUP_PW = 'not-the-password';
  const bad = await startProxy(t, cluster, { auth: { query: { ...query, passwordEnv: 'PGBUDGET_TEST_BAD_LOOKUP_PW' } }, services });
  const started = Date.now();
  const r = await login(bad, 'scram_u', 'scram-pw');
  t.not(r.code, 0);
  t.match(r.stderr, 'FATAL:  pgbudget: could not look up the password of user "scram_u"');
  t.match(r.stderr, "HINT:  The cause is in pgbudget's log (auth.query).");
  t.notMatch(r.stderr, /not-the-password|lookup_u/, 'nothing of the lookup reaches the client');
  t.ok(Date.now() - started < 5000, 'refused without waiting for a timeout');
  t.equal((await login(proxy, 'md5_u', 'md5-pw')).stdout.trim(), 'md5_u', 'the other proxy and its clients are untouched');
  await assertNoLeaks(t, bad);
});

t.test("the default lookup (pg_authid, PgBouncer's own query) with a superuser lookup role; auth.users wins over it", async (t) => {
  const p = await startProxy(t, cluster, {
    auth: { query: { user: 'postgres' }, users: [{ name: 'md5_u', password: 'md5-pw' }] },
    services,
  });
  t.equal((await login(p, 'scram_u', 'scram-pw')).stdout.trim(), 'scram_u');
  t.match((await login(p, 'expired_u', 'expired-pw')).stderr, failedFor('expired_u'));
  t.equal((await login(p, 'md5_u', 'md5-pw')).stdout.trim(), 'md5_u');
});
