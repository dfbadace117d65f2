// Credentials without sockets: the static sources, and auth.query's cache
// (freshness, one lookup per burst, what a lookup's answer means, what
// survives expiry for server logins) against a pool that answers from a table.
import t from 'tap';
import { keysFromPassword } from '../../src/auth/scram.js';
import { validateConfig } from '../../src/config/schema.js';
import { Credentials } from '../../src/proxy/credentials.js';
import type { LookupPool } from '../../src/server/authQuery.js';
import type { ServerConnection } from '../../src/server/connection.js';

const salt = Buffer.from('0123456789abcdef');
const keys = keysFromPassword('pw', salt, 4096);
const verifier = `SCRAM-SHA-256$4096:${salt.toString('base64')}$${keys.storedKey.toString('base64')}:${keys.serverKey.toString('base64')}`;

/** A pool whose one connection answers the lookup from `table`; counts lookups, and fails them while `down`. */
function tablePool(table: Record<string, string | null>) {
  const state = { lookups: 0, down: false, released: 0, lastSql: '', lastParams: [] as string[] };
  const conn = {
    rows: async (sql: string, params: string[]) => {
      state.lookups++;
      state.lastSql = sql;
      state.lastParams = params;
      if (state.down) throw new Error('permission denied for function user_lookup');
      const user = params[0];
      return user in table ? [[user, table[user]]] : [];
    },
  } as unknown as ServerConnection;
  const pool: LookupPool = {
    acquire: (_service, _key, handlers) => {
      queueMicrotask(() => handlers.onAssign(conn, 0));
      return null;
    },
    release: () => void state.released++,
  };
  return { pool, state };
}

const config = (cacheMs: number, extra: Record<string, unknown> = {}) =>
  validateConfig({ auth: { query: { user: 'lookup', password: 'x', cacheMs }, ...extra }, services: [{ name: 'w', budget: 1 }] });

t.test('a lookup answers once per cacheMs; the user is $1, never in the SQL', async (t) => {
  const { pool, state } = tablePool({ app: verifier });
  const c = Credentials.load(config(1000), null, pool);
  t.equal(c.lookup('app'), undefined, 'unknown until asked');
  const known = await c.fetch('app');
  t.equal(known?.secret.kind, 'scram');
  t.same(state.lastParams, ['app']);
  t.notMatch(state.lastSql, /app/);
  t.equal(c.lookup('app', Date.now())?.secret.kind, 'scram', 'fresh: answered from the cache');
  t.equal(c.lookup('app', Date.now() + 1001), undefined, 'expired: asked again');
  t.equal(state.lookups, 1);
  t.equal(state.released, 1, 'the connection goes back after each lookup');
});

t.test('a burst of one user asks once', async (t) => {
  const { pool, state } = tablePool({ app: verifier });
  const c = Credentials.load(config(1000), null, pool);
  const all = await Promise.all(Array.from({ length: 50 }, () => c.fetch('app')));
  t.equal(state.lookups, 1);
  t.ok(all.every((k) => k === all[0]));
  await c.fetch('app');
  t.equal(state.lookups, 2, 'a fetch after the burst asks again (the caller checks freshness first)');
});

t.test('no row, a NULL secret, an empty one: nothing to log in with (null), and cached as such', async (t) => {
  const { pool } = tablePool({ nopw: null, empty: '' });
  const c = Credentials.load(config(1000), null, pool);
  t.equal(await c.fetch('nobody'), null);
  t.equal(await c.fetch('nopw'), null);
  t.equal(await c.fetch('empty'), null);
  t.equal(c.lookup('nobody'), null, 'a negative answer is cached too');
  t.equal(c.serverPassword('nopw'), undefined);
});

t.test('md5 hashes and passwords in clear are usable for both sides', async (t) => {
  const { pool } = tablePool({ m: 'md5' + 'a'.repeat(32), p: 'clear' });
  const c = Credentials.load(config(1000), null, pool);
  t.equal((await c.fetch('m'))?.secret.kind, 'md5');
  t.equal(c.serverPassword('m'), 'md5' + 'a'.repeat(32), 'the md5 hash answers the server');
  const p = await c.fetch('p');
  t.ok(p?.scram, 'a password in clear gets SCRAM keys so SCRAM can be offered');
});

t.test('a proved ClientKey logs server connections in after the entry has expired, and survives a re-lookup of the same verifier', async (t) => {
  const { pool } = tablePool({ app: verifier });
  const c = Credentials.load(config(1), null, pool);
  await c.fetch('app');
  c.proved('app', keys.clientKey);
  await new Promise((r) => setTimeout(r, 5));
  t.equal(c.lookup('app'), undefined, 'expired for clients');
  t.same((c.serverPassword('app') as { clientKey: Buffer }).clientKey, keys.clientKey, 'still there for server logins');
  await c.fetch('app');
  t.same((c.serverPassword('app') as { clientKey: Buffer }).clientKey, keys.clientKey, 'the same verifier keeps the key');
});

t.test('a lookup that fails rejects, caches nothing, and the next one tries again', async (t) => {
  const { pool, state } = tablePool({ app: verifier });
  const c = Credentials.load(config(1000), null, pool);
  state.down = true;
  await t.rejects(c.fetch('app'), /auth\.query failed: permission denied/);
  t.equal(c.lookup('app'), undefined);
  state.down = false;
  t.equal((await c.fetch('app'))?.secret.kind, 'scram');
});

t.test('static sources win over the lookup, and a reload with the same lookup keeps its answers', async (t) => {
  const { pool, state } = tablePool({ app: verifier, other: verifier });
  const c = Credentials.load(config(60_000, { users: [{ name: 'app', password: 'static' }] }), null, pool);
  t.equal(c.lookup('app')?.secret.kind, 'password', 'auth.users names it: no lookup');
  await c.fetch('other');
  const reloaded = Credentials.load(config(60_000), c, pool);
  t.equal(reloaded.lookup('other')?.secret.kind, 'scram', 'kept across the reload');
  const changed = Credentials.load(validateConfig({ auth: { query: { user: 'lookup', password: 'x', sql: 'SELECT 1, 2' } }, services: [{ name: 'w', budget: 1 }] }), c, pool);
  t.equal(changed.lookup('other'), undefined, 'another query: asked again');
  t.equal(state.lookups, 1);
});

t.test('remembered answers are bounded: random user names cannot grow memory', async (t) => {
  const { pool } = tablePool({});
  const c = Credentials.load(config(60_000), null, pool);
  for (let i = 0; i < 10_050; i++) await c.fetch(`u${i}`);
  t.equal(c.lookup('u0'), undefined, 'the oldest were forgotten');
  t.equal(c.lookup('u10049'), null, 'the newest are remembered');
});
