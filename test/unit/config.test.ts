import t from 'tap';
import { Ajv } from 'ajv';
import { configFromUpstreamUrl } from '../../src/config/load.js';
import { matchService } from '../../src/client/match.js';
import { AJV_OPTIONS, adminWarning, ConfigError, ConfigSchema, configWarnings, overcommitWarning, trustWarning, validateConfig } from '../../src/config/schema.js';

const minimal = { services: [{ name: 'web', budget: 5 }] };

function problems(raw: unknown): string[] {
  try {
    validateConfig(raw);
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  return [];
}

t.test('defaults are filled in', async (t) => {
  const c = validateConfig(minimal);
  t.same(c.listen, { host: '127.0.0.1', port: 6432 });
  t.same(c.admin, { host: '127.0.0.1', port: 9187, metricsNeedToken: false }, 'loopback, no token');
  t.same(c.upstream, { host: '127.0.0.1', port: 5432, maxConnections: 40, autoMargin: 5, autoInitial: 10, connectTimeoutMs: 5000, tls: { mode: 'prefer' } });
  t.equal(c.startupTimeoutMs, 10000);
  t.same(c.services[0], {
    name: 'web',
    match: {},
    budget: 5,
    enforce: true,
    poolMode: 'session',
    onSessionState: 'pin',
    queue: { maxWaiting: 1000, timeoutMs: 30000 },
    idleInTransactionTimeoutMs: 0,
    queryTimeoutMs: 0,
    surge: { forMs: 10000, factor: 5, minRatePerSecond: 1 },
    auth: { method: 'scram-sha-256' },
    maxClients: 0,
  });
  t.same(c.surge, { forMs: 10000, factor: 5, minRatePerSecond: 1 });
  t.same(c.auth, { method: 'scram-sha-256', users: [] }, 'passwords are asked for unless trust is written');
  t.equal(c.authTimeoutMs, 10000);
  t.equal(c.tcpKeepaliveMs, 30000);
  t.equal(c.clientIdleTimeoutMs, 0, 'off');
  t.equal(c.idleInTransactionTimeoutMs, 0, 'off');
  t.equal(c.queryTimeoutMs, 0, 'off');
});

t.test('timeouts: global values, per-service overrides, and 0 for off', async (t) => {
  const c = validateConfig({
    tcpKeepaliveMs: 0,
    clientIdleTimeoutMs: 60000,
    idleInTransactionTimeoutMs: 5000,
    queryTimeoutMs: 2000,
    services: [
      { name: 'web', budget: 5 },
      { name: 'batch', budget: 2, idleInTransactionTimeoutMs: 0, queryTimeoutMs: 600000 },
    ],
  });
  t.equal(c.tcpKeepaliveMs, 0);
  t.equal(c.clientIdleTimeoutMs, 60000);
  t.same([c.services[0].idleInTransactionTimeoutMs, c.services[0].queryTimeoutMs], [5000, 2000], 'the global values');
  t.same([c.services[1].idleInTransactionTimeoutMs, c.services[1].queryTimeoutMs], [0, 600000], 'its own values');
  t.same(problems({ ...minimal, queryTimeoutMs: -1 }), ['queryTimeoutMs: must be a non-negative integer (milliseconds; 0 is off) (got -1)']);
  t.same(problems({ services: [{ name: 'a', budget: 1, idleInTransactionTimeoutMs: '5s' }] }), [
    'services[0].idleInTransactionTimeoutMs: must be a non-negative integer (milliseconds; 0 is off) (got "5s")',
  ]);
});

t.test('surge: global values, each field overridable per service', async (t) => {
  const c = validateConfig({
    surge: { forMs: 2000, factor: 3 },
    services: [
      { name: 'web', budget: 5 },
      { name: 'batch', budget: 2, surge: { forMs: 0, minRatePerSecond: 0.5 } },
    ],
  });
  t.same(c.surge, { forMs: 2000, factor: 3, minRatePerSecond: 1 }, 'a default for what the file leaves out');
  t.same(c.services[0].surge, { forMs: 2000, factor: 3, minRatePerSecond: 1 }, 'the global values');
  t.same(c.services[1].surge, { forMs: 0, factor: 3, minRatePerSecond: 0.5 }, 'its own values, the global one for the rest');
  t.same(problems({ ...minimal, surge: { factor: 0.5, minRatePerSecond: -1, forMs: 1.5, often: true } }), [
    'surge.often: unknown field',
    'surge.forMs: must be a non-negative integer (got 1.5)',
    'surge.factor: must be a number >= 1 (got 0.5)',
    'surge.minRatePerSecond: must be a non-negative number (got -1)',
  ]);
  t.same(problems({ services: [{ name: 'a', budget: 1, surge: { factor: '5' } }] }), ['services[0].surge.factor: must be a number >= 1 (got "5")']);
});

t.test('the documented example is valid', async (t) => {
  const c = validateConfig({
    listen: '127.0.0.1:6432',
    admin: '127.0.0.1:9187',
    upstream: { host: '127.0.0.1', port: 5432, maxConnections: 40 },
    services: [
      { name: 'segmentation', match: { user: 'segmentation' }, budget: 10, poolMode: 'transaction', queue: { maxWaiting: 1000, timeoutMs: 30000 } },
    ],
  });
  t.equal(c.services[0].poolMode, 'transaction');
});

t.test('validation names the exact bad field', async (t) => {
  t.same(problems({ services: [{ name: 'a', budget: 1 }, { name: 'b', budget: -3 }] }), [
    'services[1].budget: must be a positive integer (got -3)',
  ]);
  t.same(problems({ services: [] }), ['services: must be a non-empty list (got [])']);
  t.same(problems({ services: [{ name: 'a', budget: 1, poolMode: 'statement' }] }), [
    'services[0].poolMode: must be one of session, transaction (got "statement")',
  ]);
  t.same(problems({ ...minimal, upstream: { maxConnections: 0 } }), ['upstream.maxConnections: must be a positive integer or "auto" (got 0)']);
  t.same(problems({ ...minimal, listen: 'nowhere' }), ['listen: must be "host:port" (got "nowhere")']);
  t.same(problems({ ...minimal, budgte: 3 }), ['budgte: unknown field']);
  t.same(problems({ services: [{ name: 'a', budget: 1, match: { usr: 'x' } }] }), ['services[0].match.usr: unknown field']);
  t.same(problems({ ...minimal, defaultService: 'nope' }), ['defaultService: must name one of services[].name (got "nope")']);
  t.same(problems({ services: [{ name: 'a', budget: 1 }, { name: 'a', budget: 2 }] }), ['services[1].name: must be unique (got "a")']);
  t.same(problems({ services: [{ budget: 1 }] }), ['services[0].name: is required']);
  t.same(problems({ services: [{ name: 'a', budget: 1, queue: { timeoutMs: 'soon' } }] }), [
    'services[0].queue.timeoutMs: must be a positive integer (got "soon")',
  ]);
  t.equal(problems({ services: [{ name: 'a' }], logLevel: 'loud' }).length, 2, 'every problem is reported');
});

t.test('service matching: first match wins, then defaultService', async (t) => {
  const c = validateConfig({
    services: [
      { name: 'seg', match: { user: 'seg' }, budget: 1 },
      { name: 'report', match: { database: 'dw', applicationName: 'metabase' }, budget: 1 },
      { name: 'seg2', match: { user: 'seg' }, budget: 1 },
      { name: 'other', budget: 1, match: { user: 'nobody' } },
    ],
  });
  const m = (user: string, database: string, applicationName = '') => matchService(c, { user, database, applicationName })?.name;
  t.equal(m('seg', 'x'), 'seg');
  t.equal(m('bob', 'dw', 'metabase'), 'report');
  t.equal(m('bob', 'dw', 'psql'), undefined);
  const withDefault = { ...c, defaultService: 'other' };
  t.equal(matchService(withDefault, { user: 'bob', database: 'dw', applicationName: 'psql' })?.name, 'other');
});

t.test('overcommit warning', async (t) => {
  t.equal(overcommitWarning(validateConfig(minimal)), null);
  const c = validateConfig({ upstream: { maxConnections: 16 }, services: [{ name: 'a', budget: 10 }, { name: 'b', budget: 10 }] });
  t.match(overcommitWarning(c), /add up to 20, more than upstream.maxConnections 16/);
});

t.test('upstream.maxConnections auto, and the headroom reading it needs', async (t) => {
  const c = validateConfig({ ...minimal, upstream: { maxConnections: 'auto', autoCeiling: 30 }, headroom: { user: 'monitor' } });
  t.match(c.upstream, { maxConnections: 'auto', autoMargin: 5, autoCeiling: 30, autoInitial: 10 });
  t.same(c.headroom, { intervalMs: 5000, user: 'monitor', database: 'postgres' });
  t.same(validateConfig(minimal).headroom, { intervalMs: 5000, database: 'postgres' }, 'no user: no readings');
  t.same(problems({ ...minimal, upstream: { maxConnections: 'auto' } }), [
    'headroom.user: must be set for upstream.maxConnections "auto" (the role that reads what the database has free)',
  ]);
  t.same(problems({ ...minimal, upstream: { maxConnections: 'some' } }), ['upstream.maxConnections: must be a positive integer or "auto" (got "some")']);
  t.same(problems({ ...minimal, upstream: { autoMargin: -1, autoCeiling: 0 } }), [
    'upstream.autoMargin: must be a non-negative integer (got -1)',
    'upstream.autoCeiling: must be a positive integer (got 0)',
  ]);
  t.same(problems({ ...minimal, headroom: { user: 'm', password: 'x', passwordEnv: 'Y', intervalMs: 10 } }), [
    'headroom.intervalMs: must be an integer >= 100 (milliseconds) (got 10)',
    'headroom.passwordEnv: cannot be set together with password',
  ]);
  t.same(problems({ services: [{ name: 'pgbudget:headroom', budget: 1 }] }), ['services[0].name: is the name of the headroom reading; choose another']);
  const over = { services: [{ name: 'a', budget: 10 }, { name: 'b', budget: 10 }], headroom: { user: 'm' } };
  t.equal(overcommitWarning(validateConfig({ ...over, upstream: { maxConnections: 'auto' } })), null, 'auto without a ceiling: nothing to compare');
  t.match(overcommitWarning(validateConfig({ ...over, upstream: { maxConnections: 'auto', autoCeiling: 16 } })), /add up to 20, more than upstream.autoCeiling 16/);
});

t.test('upstream URL gives one default service', async (t) => {
  const c = configFromUpstreamUrl('postgres://u:s%40cret@db.local:5433/x');
  t.same(c.upstream, { host: 'db.local', port: 5433, maxConnections: 40, autoMargin: 5, autoInitial: 10, connectTimeoutMs: 5000, tls: { mode: 'prefer' } });
  t.equal(c.defaultService, 'default');
  t.equal(c.services[0].password, 's@cret');
  t.throws(() => configFromUpstreamUrl('mysql://x'), /must start with postgres:\/\//);
});

t.test('the wording of every kind of problem', async (t) => {
  t.same(problems({ ...minimal, listen: '' }), ['listen: must be a non-empty string (got "")']);
  t.same(problems({ ...minimal, admin: 9187 }), ['admin: must be "host:port" or a mapping (got 9187)']);
  t.same(problems({ ...minimal, admin: 'localhost:70000' }), ['admin: must be "host:port" (got "localhost:70000")']);
  t.same(problems({ ...minimal, listen: ':6432' }), ['listen: must be "host:port" (got ":6432")']);
  t.same(problems({ ...minimal, logLevel: 'loud' }), ['logLevel: must be one of fatal, error, warn, info, debug, trace, silent (got "loud")']);
  t.same(problems({ ...minimal, maxMessageBytes: 100 }), ['maxMessageBytes: must be an integer >= 1024 (got 100)']);
  t.same(problems({ ...minimal, shutdownTimeoutMs: -1 }), ['shutdownTimeoutMs: must be a non-negative integer (got -1)']);
  t.same(problems({ ...minimal, startupTimeoutMs: 1.5 }), ['startupTimeoutMs: must be a positive integer (got 1.5)']);
  t.same(problems({ ...minimal, upstream: null }), ['upstream: must be a mapping (got null)']);
  t.same(problems({ ...minimal, upstream: { port: 70000 } }), ['upstream.port: must be a port number (1-65535) (got 70000)']);
  t.same(problems({ ...minimal, upstream: { port: 0 } }), ['upstream.port: must be a port number (1-65535) (got 0)']);
  t.same(problems({ ...minimal, upstream: { host: '' } }), ['upstream.host: must be a non-empty string (got "")']);
  t.same(problems('services: []'), ['(top level): must be a mapping (got "services: []")', 'services: must be a non-empty list']);
  t.same(problems(null), ['services: must be a non-empty list']);
  t.same(problems({ services: 'web' }), ['services: must be a non-empty list (got "web")']);
  t.same(problems({ services: [5] }), ['services[0]: must be a mapping (got 5)']);
  t.same(problems({ services: [{ name: 'a' }] }), ['services[0].budget: is required']);
  t.same(problems({ services: [{ name: '', budget: 1 }] }), ['services[0].name: must be a non-empty string (got "")']);
  t.same(problems({ services: [{ name: 'a', budget: 1, match: 'a' }] }), ['services[0].match: must be a mapping (got "a")']);
  t.same(problems({ services: [{ name: 'a', budget: 1, match: { user: null } }] }), [
    'services[0].match.user: must be a non-empty string or a non-empty list of them (got null)',
  ]);
  t.same(problems({ services: [{ name: 'a', budget: 1, queue: { maxWaiting: -1, x: 1 } }] }), [
    'services[0].queue.x: unknown field',
    'services[0].queue.maxWaiting: must be a non-negative integer (got -1)',
  ]);
  t.same(problems({ services: [{ name: 'a', budget: 1, onSessionState: 3 }] }), [
    'services[0].onSessionState: must be one of pin, error (got 3)',
  ]);
  t.same(problems({ services: [{ name: 'a', budget: 1, password: 'x', passwordEnv: 'PW' }] }), [
    'services[0].passwordEnv: cannot be set together with password',
  ]);
  t.same(problems({ services: [{ name: 'a', budget: 1, passwordEnv: '' }] }), ['services[0].passwordEnv: must be a non-empty string (got "")']);
  t.same(problems({ ...minimal, defaultService: '' }), ['defaultService: must be a non-empty string (got "")']);
});

t.test('addresses, and what is passed through as given', async (t) => {
  const c = validateConfig({
    ...minimal,
    listen: '[::1]:0',
    admin: 'localhost:9000',
    services: [{ name: 'a', budget: 1, match: { user: 'u', applicationName: 'app' }, passwordEnv: 'PW' }],
    defaultService: 'a',
  });
  t.same(c.listen, { host: '::1', port: 0 });
  t.same(c.admin, { host: 'localhost', port: 9000, metricsNeedToken: false });
  t.same(c.services[0].match, { user: 'u', applicationName: 'app' });
  t.equal(c.services[0].passwordEnv, 'PW');
  t.notOk('password' in c.services[0], 'no password key when none is given');
  t.equal(c.defaultService, 'a');
  t.notOk('defaultService' in validateConfig(minimal), 'no defaultService key when none is given');
});

t.test('the document given is not changed', async (t) => {
  const raw = { services: [{ name: 'a', budget: 1, queue: {} }], upstream: {} };
  const copy = structuredClone(raw);
  validateConfig(raw);
  t.same(raw, copy);
});

t.test('every problem at once, in the order the schema declares the fields', async (t) => {
  t.same(
    problems({
      services: [
        { name: 'a', budget: 0, colour: 'red' },
        { name: 'a', budget: 1, password: 'x', passwordEnv: 'PW' },
      ],
      defaultService: 'b',
      upstream: { port: 0 },
      logLevel: 'loud',
      budgte: 3,
    }),
    [
      'budgte: unknown field',
      'logLevel: must be one of fatal, error, warn, info, debug, trace, silent (got "loud")',
      'upstream.port: must be a port number (1-65535) (got 0)',
      'defaultService: must name one of services[].name (got "b")',
      'services[0].colour: unknown field',
      'services[0].budget: must be a positive integer (got 0)',
      'services[1].name: must be unique (got "a")',
      'services[1].passwordEnv: cannot be set together with password',
    ],
  );
});

t.test('the schema is valid JSON Schema (the validator skips this check to start faster)', async (t) => {
  const ajv = new Ajv({ ...AJV_OPTIONS, validateSchema: true });
  t.ok(ajv.validateSchema(ConfigSchema), JSON.stringify(ajv.errors));
  t.doesNotThrow(() => ajv.compile(ConfigSchema));
});

t.test('auth: a service may set its own method; each user has exactly one password source, once', async (t) => {
  const c = validateConfig({
    auth: { method: 'md5', users: [{ name: 'a', password: 'x' }, { name: 'b', passwordEnv: 'B_PW' }] },
    services: [{ name: 'web', budget: 1 }, { name: 'side', budget: 1, auth: { method: 'trust' } }],
  });
  t.same(c.services.map((s) => s.auth.method), ['md5', 'trust']);
  t.throws(
    () => validateConfig({ auth: { users: [{ name: 'a' }, { name: 'a', password: 'x', passwordEnv: 'Y' }] }, services: [{ name: 'w', budget: 1 }] }),
    {
      message: [
        'auth.users[0].password: exactly one of password or passwordEnv must be set',
        'auth.users[1].name: must be unique (got "a")',
        'auth.users[1].password: exactly one of password or passwordEnv must be set',
      ].join('\n'),
    },
  );
  t.throws(() => validateConfig({ auth: { method: 'ldap' }, services: [{ name: 'w', budget: 1 }] }), /auth\.method: must be one of/);
});

t.test('trust on an address others can reach is allowed but said', async (t) => {
  const loop = validateConfig({ auth: { method: 'trust' }, services: [{ name: 'w', budget: 1 }] });
  t.equal(trustWarning(loop), null, 'loopback: fine');
  const open = validateConfig({ listen: '0.0.0.0:6432', services: [{ name: 'w', budget: 1 }, { name: 's', budget: 1, auth: { method: 'trust' } }] });
  t.equal(trustWarning(open), 'auth.method trust on 0.0.0.0: anyone who reaches the port logs in as any user (services: s)');
});

t.test('admin: "host:port", or a mapping that also names a token', async (t) => {
  t.same(validateConfig({ ...minimal, admin: '0.0.0.0:9000' }).admin, { host: '0.0.0.0', port: 9000, metricsNeedToken: false }, 'the string form');
  t.same(validateConfig({ ...minimal, admin: {} }).admin, { host: '127.0.0.1', port: 9187, metricsNeedToken: false }, 'an empty mapping: the defaults');
  t.same(
    validateConfig({ ...minimal, admin: { listen: '[::1]:9000', tokenEnv: 'ADMIN_TOKEN' } }).admin,
    { host: '::1', port: 9000, tokenEnv: 'ADMIN_TOKEN', metricsNeedToken: false },
  );
  t.same(
    validateConfig({ ...minimal, admin: { tokenFile: '/run/secrets/admin', metricsNeedToken: true } }).admin,
    { host: '127.0.0.1', port: 9187, tokenFile: '/run/secrets/admin', metricsNeedToken: true },
  );
  t.same(problems({ ...minimal, admin: { tokenEnv: 'A', tokenFile: '/f' } }), ['admin.tokenFile: cannot be set together with tokenEnv']);
  t.same(problems({ ...minimal, admin: { metricsNeedToken: true } }), ['admin.metricsNeedToken: needs a token: set tokenEnv or tokenFile']);
  // The branch of the value's kind is the one worded: a mapping's problems are its fields'.
  t.same(problems({ ...minimal, admin: { lisen: '0.0.0.0:9000' } }), ['admin.lisen: unknown field']);
  t.same(problems({ ...minimal, admin: { listen: 'nowhere' } }), ['admin.listen: must be "host:port" (got "nowhere")']);
  t.same(problems({ ...minimal, admin: { tokenEnv: '' } }), ['admin.tokenEnv: must be a non-empty string (got "")']);
  t.same(problems({ ...minimal, admin: { listen: '127.0.0.1:1', metricsNeedToken: 'yes' } }), ['admin.metricsNeedToken: must be true or false (got "yes")']);
  t.same(problems({ ...minimal, admin: [] }), ['admin: must be "host:port" or a mapping (got [])']);
  // The same for the other union: a list's problem is its item's.
  t.same(problems({ services: [{ name: 'a', budget: 1, match: { user: ['a', ''] } }] }), ['services[0].match.user[1]: must be a non-empty string (got "")']);
});

t.test('an admin server others can reach without a token is allowed but said', async (t) => {
  t.equal(adminWarning(validateConfig(minimal)), null, 'loopback: fine');
  t.equal(adminWarning(validateConfig({ ...minimal, admin: { listen: '0.0.0.0:9187', tokenEnv: 'T' } })), null, 'with a token: fine');
  const open = validateConfig({ ...minimal, admin: '0.0.0.0:9187' });
  const warning = 'admin on 0.0.0.0 without a token: anyone who reaches the port reads /status and /metrics (set admin.tokenEnv or admin.tokenFile)';
  t.equal(adminWarning(open), warning);
  t.same(configWarnings(open), [warning], 'among the warnings logged at start and on reload');
});

t.test('match.user and match.database may each be a list', async (t) => {
  const c = validateConfig({
    services: [
      { name: 'reports', budget: 1, match: { user: ['analyst', 'etl'], database: ['dw', 'dw_staging'] } },
      { name: 'rest', budget: 1 },
    ],
  });
  const who = (user: string, database: string) => matchService(c, { user, database, applicationName: '' })?.name;
  t.equal(who('etl', 'dw_staging'), 'reports');
  t.equal(who('analyst', 'dw'), 'reports');
  t.equal(who('analyst', 'app'), 'rest', 'every key must match');
  t.equal(who('web', 'dw'), 'rest');
  t.same(problems({ services: [{ name: 'a', budget: 1, match: { user: [] } }] }), [
    'services[0].match.user: must be a non-empty string or a non-empty list of them (got [])',
  ]);
});

t.test('tls: allow once a certificate is set; every mode but disable needs cert and key, verify-client a CA', async (t) => {
  t.equal(validateConfig(minimal).tls.mode, 'disable');
  t.equal(validateConfig({ ...minimal, tls: { cert: 'c.pem', key: 'k.pem' } }).tls.mode, 'allow');
  t.same(problems({ ...minimal, tls: { mode: 'require' } }), ['tls.cert: and tls.key must be set for tls.mode "require"']);
  t.same(problems({ ...minimal, tls: { mode: 'verify-client', cert: 'c', key: 'k' } }), ['tls.ca: must be set for tls.mode "verify-client"']);
});

t.test('password needs TLS; cert needs verify-client', async (t) => {
  t.same(problems({ ...minimal, auth: { method: 'password' } }), ['auth.method: password needs TLS: set tls.cert and tls.key']);
  t.same(problems({ services: [{ name: 'w', budget: 1, auth: { method: 'cert' } }], tls: { cert: 'c', key: 'k' } }), [
    'services[0].auth.method: cert needs tls.mode "verify-client"',
  ]);
});

t.test("auth.query: PgBouncer's default query and a 10 s cache; one password source; the lookup's service name is reserved", async (t) => {
  const c = validateConfig({ ...minimal, auth: { query: { user: 'lookup' } } });
  t.same(c.auth.query, {
    user: 'lookup',
    database: 'postgres',
    sql: 'SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END FROM pg_authid WHERE rolname = $1 AND rolcanlogin',
    cacheMs: 10_000,
  });
  t.same(problems({ ...minimal, auth: { query: { user: 'l', password: 'a', passwordEnv: 'B' } } }), ['auth.query.passwordEnv: cannot be set together with password']);
  t.same(problems({ ...minimal, auth: { query: { password: 'a' } } }), ['auth.query.user: is required']);
  t.same(problems({ services: [{ name: 'pgbudget:auth_query', budget: 1 }] }), ['services[0].name: is the name of the auth.query lookup; choose another']);
});

t.test('upstream.tls: prefer by default; the modes are libpq sslmode values; a client certificate needs its key', async (t) => {
  t.equal(validateConfig(minimal).upstream.tls.mode, 'prefer');
  t.equal(validateConfig({ ...minimal, upstream: { tls: { mode: 'verify-full', ca: '/ca.pem' } } }).upstream.tls.ca, '/ca.pem');
  t.match(problems({ ...minimal, upstream: { tls: { mode: 'allow' } } }), [/^upstream\.tls\.mode: must be one of/]);
  t.same(problems({ ...minimal, upstream: { tls: { key: '/k.pem' } } }), ['upstream.tls.cert: must be set with upstream.tls.key']);
});
