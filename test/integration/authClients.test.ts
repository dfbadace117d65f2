// Logging in through pgbudget with every client the project drives: psql,
// psycopg2, node-postgres (JavaScript, and over libpq when pg-native is
// installed), postgres.js and the JDBC driver. For each: the right and a wrong
// password for SCRAM and md5, TLS with sslmode=verify-full against a CA made
// here with openssl, channel binding (SCRAM-SHA-256-PLUS), a client
// certificate, and auth.query: passwords only the database knows, looked up
// through a least-privileged role and the README's SECURITY DEFINER function
// (SCRAM and md5 roles, a SASLprep password, a role without a password, an
// expired one), and once a pool of server connections that opens for such a
// role with no password in pgbudget's config. A refused login must read, in
// each client, exactly as it reads from PostgreSQL itself (the same case
// against a throwaway cluster, with TLS where the case has it) once the port
// is taken out: the same words, the same SQLSTATE where the client shows one.
// The outcomes are printed as a table.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t, { type Test } from 'tap';
import pg from 'pg';
import postgres from 'postgres';
import { makeCertDir } from '../helpers/certs.js';
import { createLookupFunction, LOOKUP_SQL } from '../helpers/authQuery.js';
import { withCluster } from '../helpers/cluster.js';
import { jdbcAvailable, psycopg2Available, runJava, runPython, type ForeignResult } from '../helpers/foreign-clients.js';
import { assertNoLeaks, run, startProxy } from '../helpers/proxy.js';

const WRONG = 'not-the-password';
// U+2168 ROMAN NUMERAL NINE: SASLprep (NFKC) makes "IX-IX" of it, which is what PostgreSQL's verifier is made from.
const PREP = 'IX-\u2168';

// Certificates: a CA and the server certificate it signs (for the proxy and the TLS cluster alike), a
// client certificate for app_u, and another CA that signed none of them.
const certs = makeCertDir(t, 'pgbudget-authclients-');
certs.makeCa('ca');
certs.makeCert('server', 'ca', 'localhost', 'DNS:localhost,IP:127.0.0.1');
certs.makeCert('client', 'ca', 'app_u');
certs.makeCa('ca2');
const clientKeyDer = certs.pkcs8Der('client');
const ca = certs.file('ca.pem');

const passwordUsers = [
  { name: 'scram_u', password: 'scram-pw', method: 'scram-sha-256' as const },
  { name: 'md5_u', password: 'md5-pw', method: 'md5' as const },
  { name: 'app_u', password: 'app-pw', method: 'scram-sha-256' as const },
];
// auth.query's roles: pgbudget knows none of their passwords, only lookup_u's. nopw_u loses its password and
// expired_u's expires below; their pg_hba lines still ask for SCRAM, so PostgreSQL itself refuses them as pgbudget must.
const lookupUsers = [
  { name: 'lookup_u', password: 'lookup-pw', method: 'scram-sha-256' as const },
  { name: 'aq_scram_u', password: 'aq-scram-pw', method: 'scram-sha-256' as const },
  { name: 'aq_md5_u', password: 'aq-md5-pw', method: 'md5' as const },
  { name: 'prep_u', password: PREP, method: 'scram-sha-256' as const },
  { name: 'nopw_u', password: 'nopw-pw', method: 'scram-sha-256' as const },
  { name: 'expired_u', password: 'expired-pw', method: 'scram-sha-256' as const },
];
// The cluster behind every proxy, and the one the password cases are compared with (no TLS, as the proxy in front of it).
const cluster = await withCluster(t, { maxConnections: 30, passwordUsers: [...passwordUsers, ...lookupUsers] });
await cluster.query('ALTER ROLE nopw_u PASSWORD NULL');
await cluster.query(`ALTER ROLE expired_u VALID UNTIL '2001-01-01'`);
// The README's lookup, run from the README itself: a function that reads pg_authid for whoever
// may execute it (no password for an expired role), and a role that may do nothing else.
await createLookupFunction(cluster, 'lookup_u');
// The same roles with TLS on, the same certificate and CA (a server that has a CA sends it in the chain, as the proxy
// with tls.ca does: a Node.js client that trusts another CA then names it "self-signed certificate in certificate chain"):
// what the TLS cases are compared with.
const tlsCluster = await withCluster(t, {
  maxConnections: 10,
  passwordUsers,
  extraConf: { ssl: 'on', ssl_cert_file: certs.file('server.pem'), ssl_key_file: certs.serverKeyCopy('server'), ssl_ca_file: ca },
});

// What PostgreSQL stores goes to a userlist.txt as it is: scram_u's SCRAM verifier, md5_u's md5 hash.
const stored = await cluster.query<{ rolname: string; rolpassword: string }>(
  "select rolname, rolpassword from pg_authid where rolname in ('scram_u', 'md5_u') order by rolname",
);
const dir = await mkdtemp(path.join(os.tmpdir(), 'pgbudget-authclients-list-'));
t.teardown(() => rm(dir, { recursive: true, force: true }));
const userlist = path.join(dir, 'userlist.txt');
await writeFile(userlist, stored.map((r) => `"${r.rolname}" "${r.rolpassword}"\n`).join(''));

const transaction = { budget: 2, poolMode: 'transaction' };
// SCRAM and md5 on a plain proxy, secrets from auth.file.
const plain = await startProxy(t, cluster, {
  auth: { method: 'scram-sha-256', file: userlist },
  services: [
    { name: 'scram', match: { user: 'scram_u' }, ...transaction },
    { name: 'md5', match: { user: 'md5_u' }, ...transaction, auth: { method: 'md5' } },
  ],
});
const tlsFiles = { cert: certs.file('server.pem'), key: certs.file('server.key'), ca };
// SCRAM over TLS (SCRAM-SHA-256-PLUS offered), the password from auth.users.
const tls = await startProxy(t, cluster, {
  auth: { method: 'scram-sha-256', users: [{ name: 'app_u', password: 'app-pw' }] },
  tls: tlsFiles,
  services: [{ name: 'app', match: { user: 'app_u' }, ...transaction }],
});
// Client certificates: verify-client, the certificate's CN is the user; the service logs in to the server with its own password.
const certProxy = await startProxy(t, cluster, {
  auth: { method: 'cert' },
  tls: { ...tlsFiles, mode: 'verify-client' },
  services: [{ name: 'all', match: {}, ...transaction, password: 'app-pw' }],
});
// auth.query: no client's password anywhere in the config, only the lookup role's, from the environment. The server
// connections log in with what the client's own login gave: the ClientKey of its SCRAM proof, the stored md5 hash.
process.env.PGBUDGET_TEST_AUTHCLIENTS_LOOKUP_PW = 'lookup-pw';
const lookup = await startProxy(t, cluster, {
  auth: {
    method: 'scram-sha-256',
    query: { user: 'lookup_u', passwordEnv: 'PGBUDGET_TEST_AUTHCLIENTS_LOOKUP_PW', sql: LOOKUP_SQL },
  },
  services: [
    { name: 'aq_scram', match: { user: 'aq_scram_u' }, ...transaction },
    { name: 'aq_md5', match: { user: 'aq_md5_u' }, ...transaction, auth: { method: 'md5' } },
    { name: 'aq_others', match: { user: ['prep_u', 'nopw_u', 'expired_u'] }, ...transaction },
  ],
});

// ---------------------------------------------------------------------------
// the cases, the same for every client

interface Target {
  port: number;
  user: string;
  password?: string;
  /** sslmode=verify-full against `rootcert`; channel binding required; a client certificate */
  tls?: { rootcert: string; channelBinding?: boolean; cert?: boolean };
}

/** `name.ok` and `name.bad`, the right and a wrong password through `port`, and `name.direct`: the wrong one to the cluster itself. */
function rightAndWrong<N extends string>(name: N, port: number, user: string, password: string) {
  return {
    [`${name}.ok`]: { port, user, password },
    [`${name}.bad`]: { port, user, password: WRONG },
    [`${name}.direct`]: { port: cluster.port, user, password: WRONG },
  } as Record<`${N}.${'ok' | 'bad' | 'direct'}`, Target>;
}

const verifyFull = { rootcert: ca };
const withClientCert = { rootcert: ca, cert: true };
const cases = {
  ...rightAndWrong('scram', plain.port, 'scram_u', 'scram-pw'),
  ...rightAndWrong('md5', plain.port, 'md5_u', 'md5-pw'),
  'tls.ok': { port: tls.port, user: 'app_u', password: 'app-pw', tls: verifyFull },
  'tls.bad': { port: tls.port, user: 'app_u', password: WRONG, tls: verifyFull },
  'tls.direct': { port: tlsCluster.port, user: 'app_u', password: WRONG, tls: verifyFull },
  'tls.otherca': { port: tls.port, user: 'app_u', password: 'app-pw', tls: { rootcert: certs.file('ca2.pem') } },
  'tls.otherca.direct': { port: tlsCluster.port, user: 'app_u', password: 'app-pw', tls: { rootcert: certs.file('ca2.pem') } },
  'cb.ok': { port: tls.port, user: 'app_u', password: 'app-pw', tls: { ...verifyFull, channelBinding: true } },
  'cb.bad': { port: tls.port, user: 'app_u', password: WRONG, tls: { ...verifyFull, channelBinding: true } },
  'cb.direct': { port: tlsCluster.port, user: 'app_u', password: WRONG, tls: { ...verifyFull, channelBinding: true } },
  'cert.ok': { port: certProxy.port, user: 'app_u', tls: withClientCert },
  'cert.other': { port: certProxy.port, user: 'postgres', tls: withClientCert },
  ...rightAndWrong('aq.scram', lookup.port, 'aq_scram_u', 'aq-scram-pw'),
  ...rightAndWrong('aq.md5', lookup.port, 'aq_md5_u', 'aq-md5-pw'),
  // The password as the user typed it: a client that applies SASLprep logs in, one that does not is refused, directly too.
  'prep': { port: lookup.port, user: 'prep_u', password: PREP },
  'prep.direct': { port: cluster.port, user: 'prep_u', password: PREP },
  // The password nopw_u had, and expired_u's right one.
  'nopw': { port: lookup.port, user: 'nopw_u', password: 'nopw-pw' },
  'nopw.direct': { port: cluster.port, user: 'nopw_u', password: 'nopw-pw' },
  'expired': { port: lookup.port, user: 'expired_u', password: 'expired-pw' },
  'expired.direct': { port: cluster.port, user: 'expired_u', password: 'expired-pw' },
} satisfies Record<string, Target>;
type Label = keyof typeof cases;
const labels = Object.keys(cases) as Label[];

/** What one login came to: the user `select current_user` gave, or the error as the client raised it. */
type Outcome = { user: string; note?: string } | { error: string; code?: string | null } | 'unsupported';
type Outcomes = Record<Label, Outcome>;

/** libpq's connection string for a case: psql, psycopg2 and node-postgres over libpq take the same. */
function conninfo(c: Target, withPassword: boolean): Record<string, string> {
  const p: Record<string, string> = { host: '127.0.0.1', port: String(c.port), dbname: 'postgres', user: c.user, connect_timeout: '10' };
  if (withPassword && c.password !== undefined) p.password = c.password;
  if (c.tls) {
    p.sslmode = 'verify-full';
    p.sslrootcert = c.tls.rootcert;
    if (c.tls.channelBinding) p.channel_binding = 'require';
    if (c.tls.cert) Object.assign(p, { sslcert: certs.file('client.pem'), sslkey: certs.file('client.key') });
  }
  return p;
}
const conninfoString = (p: Record<string, string>) =>
  Object.entries(p)
    .map(([k, v]) => `${k}=${v}`)
    .join(' ');

/** Runs every case with `login`, one after the other. */
async function eachCase(login: (c: Target) => Promise<Outcome>): Promise<Outcomes> {
  const out = {} as Outcomes;
  for (const label of labels) out[label] = await login(cases[label]);
  return out;
}

const errorOf = (err: unknown) => {
  const e = err as { code?: string; message: string };
  return { error: e.message, code: e.code ?? null };
};

// ---------------------------------------------------------------------------
// the clients

async function psqlOutcomes(): Promise<Outcomes> {
  return eachCase(async (c) => {
    const r = await run('psql', ['-X', '-A', '-t', '-w', '-d', conninfoString(conninfo(c, false)), '-c', 'select current_user'], {
      env: { PGPASSWORD: c.password ?? '' },
    });
    return r.code === 0 ? { user: r.stdout.trim() } : { error: r.stderr.trim() };
  });
}

function nodeTls(c: Target) {
  if (!c.tls) return undefined;
  const ssl: Record<string, string> = { ca: readFileSync(c.tls.rootcert, 'utf8') };
  if (c.tls.cert) Object.assign(ssl, { cert: readFileSync(certs.file('client.pem'), 'utf8'), key: readFileSync(certs.file('client.key'), 'utf8') });
  return ssl; // rejectUnauthorized and the host's check against the certificate are Node's defaults: verify-full
}

async function nodePostgresOutcomes(): Promise<Outcomes> {
  return eachCase(async (c) => {
    const client = new pg.Client({
      host: '127.0.0.1',
      port: c.port,
      user: c.user,
      password: c.password ?? '',
      database: 'postgres',
      ssl: nodeTls(c),
      enableChannelBinding: c.tls?.channelBinding === true,
      connectionTimeoutMillis: 10_000,
    } as pg.ClientConfig);
    // node-postgres has no channel_binding=require: it binds when it may and the server offers
    // SCRAM-SHA-256-PLUS. Which mechanism it chose is read off the message it sends.
    let mechanism = '';
    const connection = (client as unknown as { connection: { sendSASLInitialResponseMessage(m: string, r: string): void } }).connection;
    const send = connection.sendSASLInitialResponseMessage.bind(connection);
    connection.sendSASLInitialResponseMessage = (m, r) => {
      mechanism = m;
      send(m, r);
    };
    try {
      await client.connect();
      const { rows } = await client.query('select current_user as u');
      return { user: rows[0].u, note: mechanism };
    } catch (err) {
      return errorOf(err);
    } finally {
      await client.end().catch(() => {});
    }
  });
}

/** node-postgres over libpq (pg-native), or null when pg-native is not installed. */
function nativeClient(): typeof pg.Client | null {
  try {
    return pg.native?.Client ?? null;
  } catch {
    return null;
  }
}

async function nodePostgresNativeOutcomes(Native: typeof pg.Client): Promise<Outcomes> {
  return eachCase(async (c) => {
    const info = conninfo(c, true);
    // node-postgres' own options where it has them; channel_binding it has not: libpq's string as it is.
    const config = c.tls?.channelBinding
      ? { nativeConnectionString: conninfoString(info) }
      : {
          host: '127.0.0.1',
          port: c.port,
          user: c.user,
          password: c.password ?? '',
          database: 'postgres',
          ssl: c.tls ? { sslmode: 'verify-full', sslrootcert: info.sslrootcert, sslcert: info.sslcert, sslkey: info.sslkey } : undefined,
        };
    const client = new Native(config as pg.ClientConfig);
    try {
      await client.connect();
      const { rows } = await client.query('select current_user as u');
      return { user: rows[0].u };
    } catch (err) {
      return errorOf(err);
    } finally {
      await client.end().catch(() => {});
    }
  });
}

async function postgresJsOutcomes(): Promise<Outcomes> {
  return eachCase(async (c) => {
    if (c.tls?.channelBinding) return 'unsupported'; // postgres.js offers SCRAM-SHA-256 only
    const sql = postgres({
      host: '127.0.0.1',
      port: c.port,
      user: c.user,
      password: c.password ?? '',
      database: 'postgres',
      ssl: nodeTls(c) ?? false,
      max: 1,
      onnotice: () => {},
      connect_timeout: 10,
    });
    try {
      const [row] = await sql`select current_user as u`;
      return { user: row.u as string };
    } catch (err) {
      return errorOf(err);
    } finally {
      await sql.end({ timeout: 1 }).catch(() => {});
    }
  });
}

/** One line of JSON a probe program printed per case, after a first line about the driver. */
function parseProbe(r: ForeignResult, what: string): { about: Record<string, unknown>; outcomes: Outcomes } {
  const lines = r.stdout.trim().split('\n').filter(Boolean);
  if (r.code !== 0 || lines.length !== labels.length + 1) {
    throw new Error(`${what} exited ${r.code} with ${lines.length} lines:\n${r.stdout}\n${r.stderr.slice(-3000)}`);
  }
  const [about, ...rest] = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  const outcomes = {} as Outcomes;
  for (const o of rest) {
    const label = o.label as Label;
    outcomes[label] = 'user' in o ? { user: o.user as string } : { error: o.error as string, code: o.code as string | null };
  }
  return { about, outcomes };
}

/**
 * `s` in ASCII, as a JVM or a Python whose locale is not UTF-8 reads its command line intact (prep_u's password is
 * not ASCII): every character past ASCII as JSON writes it, `\u2168`, which json.loads and AuthProbe.java read back.
 */
const asciiOnly = (s: string) => s.replace(/[\u0080-\uffff]/g, (ch) => `\\u${ch.charCodeAt(0).toString(16).padStart(4, '0')}`);

async function jdbcOutcomes(): Promise<{ about: Record<string, unknown>; outcomes: Outcomes }> {
  const args = labels.map((label) => {
    const c: Target = cases[label];
    const props = [`user=${c.user}`, 'connectTimeout=10'];
    if (c.password !== undefined) props.push(`password=${c.password}`);
    if (c.tls) {
      props.push('sslmode=verify-full', `sslrootcert=${c.tls.rootcert}`);
      if (c.tls.channelBinding) props.push('channelBinding=require');
      if (c.tls.cert) props.push(`sslcert=${certs.file('client.pem')}`, `sslkey=${clientKeyDer}`);
    }
    // A backslash as JSON writes it too: AuthProbe.java reads `\\` and `\uXXXX` in its arguments.
    return asciiOnly([label, `jdbc:postgresql://127.0.0.1:${c.port}/postgres`, ...props].join('\t').replace(/\\/g, '\\\\'));
  });
  const probe = parseProbe(await runJava('AuthProbe', args, 60_000), 'AuthProbe (JDBC)');
  if (probe.about.channelBinding !== true) {
    // An older pgjdbc ignores channelBinding=require and would log in unbound.
    for (const label of ['cb.ok', 'cb.bad', 'cb.direct'] as const) probe.outcomes[label] = 'unsupported';
  }
  return probe;
}

async function psycopg2Outcomes(): Promise<{ about: Record<string, unknown>; outcomes: Outcomes }> {
  const list = labels.map((label) => ({ label, params: conninfo(cases[label], true) }));
  return parseProbe(await runPython('auth_probe.py', [asciiOnly(JSON.stringify(list))], 60_000), 'auth_probe.py (psycopg2)');
}

// ---------------------------------------------------------------------------
// what each client must show

interface Client {
  name: string;
  /** Whether the client's error carries a SQLSTATE (JDBC's getSQLState, node-postgres' and postgres.js' code). */
  sqlstate: boolean;
  outcomes: Outcomes;
}

const COLUMNS = [
  'scram right',
  'scram wrong',
  'md5 right',
  'md5 wrong',
  'TLS verify-full',
  'channel binding',
  'client cert',
  'auth.query right',
  'auth.query wrong',
  'SASLprep',
  'no password',
  'expired',
] as const;
const rows: string[][] = [];
const texts: string[] = [];

/** The text with the port taken out, and the SQLSTATE, for comparing a refusal through pgbudget with PostgreSQL's. */
function shown(o: Outcome, port: number): string {
  if (o === 'unsupported' || 'user' in o) return JSON.stringify(o);
  return `${o.code ?? '-'} ${o.error.split(String(port)).join('PORT')}`;
}

function check(t: Test, client: Client): void {
  const o = client.outcomes;
  const cells: Record<(typeof COLUMNS)[number], string> = {} as never;
  const loggedIn = (label: Label, user: string): string => {
    const got = o[label];
    const ok = got !== 'unsupported' && 'user' in got && got.user === user;
    t.ok(ok, `${client.name} ${label}: logged in as ${user}`, { got });
    return ok ? `ok: ${user}` : `FAILED: ${JSON.stringify(got)}`;
  };
  /** A refusal with `words` (and `code` where the client shows SQLSTATEs), the same as PostgreSQL's in `direct` when given. */
  const refused = (label: Label, words: string, code: string, direct?: Label): string => {
    const got = o[label];
    if (got === 'unsupported' || 'user' in got) {
      t.fail(`${client.name} ${label}: refused`, { got });
      return `NOT REFUSED: ${JSON.stringify(got)}`;
    }
    t.match(got.error, words, `${client.name} ${label}: ${words}`);
    if (client.sqlstate) t.equal(got.code, code, `${client.name} ${label}: SQLSTATE ${code}`);
    let same = '';
    if (direct) {
      const mine = shown(got, cases[label].port);
      const theirs = shown(o[direct], cases[direct].port);
      t.equal(mine, theirs, `${client.name} ${label}: the same as from PostgreSQL, but for the port`);
      same = mine === theirs ? ', = direct' : ` ≠ direct (${JSON.stringify(theirs)})`;
    }
    return `${client.sqlstate ? got.code : 'refused'}${same}`;
  };
  const failed = (user: string) => `password authentication failed for user "${user}"`;

  cells['scram right'] = loggedIn('scram.ok', 'scram_u');
  cells['scram wrong'] = refused('scram.bad', failed('scram_u'), '28P01', 'scram.direct');
  cells['md5 right'] = loggedIn('md5.ok', 'md5_u');
  cells['md5 wrong'] = refused('md5.bad', failed('md5_u'), '28P01', 'md5.direct');

  const tlsIn = loggedIn('tls.ok', 'app_u');
  const tlsWrong = refused('tls.bad', failed('app_u'), '28P01', 'tls.direct');
  const otherCa = o['tls.otherca'];
  const otherCaRefused = otherCa !== 'unsupported' && 'error' in otherCa;
  t.ok(otherCaRefused, `${client.name}: a proxy certificate another CA signed is refused`, { got: otherCa });
  t.equal(shown(otherCa, tls.port), shown(o['tls.otherca.direct'], tlsCluster.port), `${client.name}: in the same words as PostgreSQL's certificate`);
  cells['TLS verify-full'] = `${tlsIn}; wrong pw ${tlsWrong}; other CA ${otherCaRefused ? 'refused' : 'NOT refused'}`;

  if (o['cb.ok'] === 'unsupported') {
    cells['channel binding'] = 'not supported by client';
  } else {
    const cbIn = loggedIn('cb.ok', 'app_u');
    const cbWrong = refused('cb.bad', failed('app_u'), '28P01', 'cb.direct');
    const mechanism = (o['cb.ok'] as { note?: string }).note;
    if (client.name === 'node-postgres') t.equal(mechanism, 'SCRAM-SHA-256-PLUS', 'node-postgres chose SCRAM-SHA-256-PLUS');
    cells['channel binding'] = `${cbIn}${client.name === 'node-postgres' ? ` (${mechanism})` : ''}; wrong pw ${cbWrong}`;
  }

  const certIn = loggedIn('cert.ok', 'app_u');
  const certOther = refused('cert.other', 'certificate authentication failed for user "postgres"', '28000');
  cells['client cert'] = `${certIn}; as another user ${certOther}`;

  cells['auth.query right'] = `scram ${loggedIn('aq.scram.ok', 'aq_scram_u')}; md5 ${loggedIn('aq.md5.ok', 'aq_md5_u')}`;
  cells['auth.query wrong'] =
    `scram ${refused('aq.scram.bad', failed('aq_scram_u'), '28P01', 'aq.scram.direct')}; ` +
    `md5 ${refused('aq.md5.bad', failed('aq_md5_u'), '28P01', 'aq.md5.direct')}`;
  // Whether the client applies SASLprep is the client's business: through pgbudget as directly, whatever that is.
  const prep = o.prep;
  if (prep !== 'unsupported' && 'user' in prep) {
    const direct = o['prep.direct'];
    const same = direct !== 'unsupported' && 'user' in direct && direct.user === prep.user;
    t.ok(same, `${client.name} prep: logged in directly too`, { direct });
    cells.SASLprep = `${loggedIn('prep', 'prep_u')}${same ? ', = direct' : ` ≠ direct (${JSON.stringify(direct)})`}`;
  } else {
    // Refused directly too: the client sent a proof of the password as typed, not as SASLprep makes it.
    const direct = o['prep.direct'];
    const noSaslprep = direct !== 'unsupported' && 'error' in direct ? ' (the client does not apply SASLprep)' : '';
    cells.SASLprep = `${refused('prep', failed('prep_u'), '28P01', 'prep.direct')}${noSaslprep}`;
  }
  cells['no password'] = refused('nopw', failed('nopw_u'), '28P01', 'nopw.direct');
  cells.expired = refused('expired', failed('expired_u'), '28P01', 'expired.direct');

  rows.push([client.name, ...COLUMNS.map((c) => cells[c])]);
  for (const label of ['scram.bad', 'md5.bad', 'cert.other', 'aq.scram.bad', 'aq.md5.bad', 'prep', 'nopw', 'expired'] as const) {
    const got = o[label];
    if (got !== 'unsupported' && 'error' in got) texts.push(`| ${client.name} | ${label} | ${got.code ?? ''} | \`${got.error.replace(/\n/g, '\\n').replace(/\|/g, '\\|')}\` |`);
  }
}

// ---------------------------------------------------------------------------
// the run: the JVM and Python start first, and work while the Node.js clients log in

const started = Date.now();
const jdbc = (async () => ((await jdbcAvailable()) ? jdbcOutcomes() : null))();
const psycopg2 = (async () => ((await psycopg2Available()) ? psycopg2Outcomes() : null))();
jdbc.catch(() => {});
psycopg2.catch(() => {});

t.test('psql', async (t) => check(t, { name: 'psql', sqlstate: false, outcomes: await psqlOutcomes() }));

t.test('node-postgres (JavaScript)', async (t) => check(t, { name: 'node-postgres', sqlstate: true, outcomes: await nodePostgresOutcomes() }));

const Native = nativeClient();
if (Native) {
  t.test('node-postgres over libpq (pg-native)', async (t) => check(t, { name: 'node-postgres native', sqlstate: false, outcomes: await nodePostgresNativeOutcomes(Native) }));
} else {
  t.comment('pg-native is not installed: node-postgres over libpq is not in the matrix');
}

t.test('postgres.js', async (t) => check(t, { name: 'postgres.js', sqlstate: true, outcomes: await postgresJsOutcomes() }));

t.test('psycopg2', async (t) => {
  const probe = await psycopg2;
  if (!probe) return void t.fail('psycopg2 is not available (npm test installs python3-psycopg2)');
  t.comment(`psycopg2 ${probe.about.psycopg2}, libpq ${probe.about.libpq}`);
  check(t, { name: 'psycopg2', sqlstate: false, outcomes: probe.outcomes });
});

t.test('JDBC', async (t) => {
  const probe = await jdbc;
  if (!probe) return void t.fail('JDBC is not available (java, javac and the PostgreSQL JDBC driver; npm test installs them)');
  t.comment(`pgjdbc ${probe.about.driver}, channelBinding property: ${probe.about.channelBinding}`);
  check(t, { name: 'JDBC', sqlstate: true, outcomes: probe.outcomes });
});

// Once, with node-postgres: two transactions held open at once through the auth.query proxy take two server
// connections, both logged in as aq_scram_u with what the clients' SCRAM proofs gave (no password in the config).
let poolLine = 'auth.query pool: not run';
t.test('auth.query: a pool of server connections in transaction mode, no password in the config', async (t) => {
  const clients = [0, 1].map(
    () => new pg.Client({ host: '127.0.0.1', port: lookup.port, user: 'aq_scram_u', password: 'aq-scram-pw', database: 'postgres' }),
  );
  try {
    await Promise.all(clients.map((c) => c.connect()));
    const pids = await Promise.all(
      clients.map(async (c) => {
        await c.query('begin');
        return (await c.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0].pid;
      }),
    );
    t.equal(new Set(pids).size, 2, 'two transactions open at once, on two server connections');
    const backends = await cluster.countClientBackends({ user: 'aq_scram_u' });
    t.ok(backends >= 2, `pg_stat_activity: ${backends} client backends of aq_scram_u`);
    const [{ n }] = await cluster.query<{ n: number }>(
      `select count(*)::int as n from pg_stat_activity where usename = 'aq_scram_u' and backend_type = 'client backend' and pid = any($1)`,
      [pids],
    );
    t.equal(n, 2, 'the two transactions run in client backends of aq_scram_u');
    await Promise.all(clients.map((c) => c.query('commit')));
    poolLine = `auth.query pool (node-postgres, transaction mode, 2 transactions held open): ${backends} client backends of aq_scram_u in pg_stat_activity`;
  } finally {
    await Promise.all(clients.map((c) => c.end().catch(() => {})));
  }
});

t.test('no slot left behind; the matrix', async (t) => {
  for (const p of [plain, tls, certProxy, lookup]) await assertNoLeaks(t, p);
  t.comment(
    [
      `logins through pgbudget, ${((Date.now() - started) / 1000).toFixed(1)} s. "= direct": the same text and SQLSTATE as from PostgreSQL itself,`,
      'but for the port; "refused": the client shows no SQLSTATE for a connection that failed',
      `| client | ${COLUMNS.join(' | ')} |`,
      `|${' --- |'.repeat(COLUMNS.length + 1)}`,
      ...rows.map((r) => `| ${r.join(' | ')} |`),
      '',
      poolLine,
      '',
      'the words of each refusal through pgbudget (the port as the client printed it)',
      '| client | case | SQLSTATE | text |',
      '| --- | --- | --- | --- |',
      ...texts,
    ].join('\n'),
  );
});
