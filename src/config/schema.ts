// The configuration, declared once: each field's type, bounds, default and
// meaning (README.md's table is tested against it). validateConfig checks a
// parsed document with ajv and words each problem "path: what is wrong (got X)".
import { Type, type Static, type TProperties, type TSchema } from '@sinclair/typebox';
import { Ajv, type ErrorObject } from 'ajv';
import type {
  AdminConfig,
  AuthMethod,
  TlsMode,
  Config,
  CoordinationConfig,
  HostPort,
  LogLevel,
  OnRedisDown,
  OnSessionState,
  PoolMode,
  ServerApplicationName,
  ServiceConfig,
  ServiceMatch,
  UpstreamConfig,
  UpstreamTlsMode,
} from '../types/config.js';

export type { AdminConfig, Config, CoordinationConfig, HostPort, LogLevel, OnSessionState, PoolMode, ServiceConfig, ServiceMatch, UpstreamConfig };

// Bounds of the integer fields, with the words a problem uses for them ("must be …").
const POSITIVE = { minimum: 1, mustBe: 'a positive integer' };
const NON_NEGATIVE = { minimum: 0, mustBe: 'a non-negative integer' };
const OFF_OR_MS = { minimum: 0, mustBe: 'a non-negative integer (milliseconds; 0 is off)' };
const PORT = { minimum: 1, maximum: 65535, mustBe: 'a port number (1-65535)' };
const FACTOR = { minimum: 1, mustBe: 'a number >= 1' };
const RATE = { minimum: 0, mustBe: 'a non-negative number' };
/** Every string field must be non-empty. */
const NON_EMPTY = { minLength: 1 };

/**
 * A field the file may leave out but a validated Config always has (ajv fills
 * in its default, or validateConfig does): optional to ajv, required in the type.
 */
function defaulted<T extends TSchema>(schema: T): T {
  return Type.Optional(schema) as unknown as T;
}

/** A mapping whose unknown fields are errors. */
function mapping<T extends TProperties>(properties: T, options: { default?: object; description?: string } = {}) {
  return Type.Object(properties, { additionalProperties: false, ...options });
}

/** A string that must be one of `values`; the README lists them before the description. */
function oneOf<T extends string>(values: readonly T[], options: { default: T; description: string }) {
  return defaulted(Type.Unsafe<T>({ enum: values, ...options }));
}

/** A "host:port" to listen on. */
function address(def: string, description: string) {
  return defaulted(Type.String({ ...NON_EMPTY, format: 'host-port', default: def, description }));
}

/** A duration in milliseconds, with its default. */
function ms(bounds: typeof POSITIVE, def: number, description: string) {
  return defaulted(Type.Integer({ ...bounds, default: def, description }));
}

const matchKey = (what: string) =>
  Type.Optional(Type.String({ ...NON_EMPTY, description: `the client's startup parameter ${what} must equal this` }));

const AUTH_METHODS: readonly AuthMethod[] = ['scram-sha-256', 'md5', 'password', 'cert', 'trust'];

const PASSWORD = Type.Optional(Type.String({ ...NON_EMPTY, description: 'the password' }));
const PASSWORD_ENV = Type.Optional(Type.String({ ...NON_EMPTY, description: 'name of an environment variable that holds the password' }));

/** PgBouncer's own default: the verifier or hash, none for a role whose password has expired. */
export const AUTH_QUERY_SQL =
  'SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END FROM pg_authid WHERE rolname = $1 AND rolcanlogin';

const AuthSchema = mapping(
  {
    method: oneOf<AuthMethod>(AUTH_METHODS, {
      default: 'scram-sha-256',
      description:
        'how clients prove who they are: a SCRAM-SHA-256 or md5 exchange against the password `users` or `file` give (`md5` uses SCRAM for a SCRAM verifier, as PostgreSQL does); `password` sends it in clear, over TLS only; `cert` takes a client certificate whose CN is the user (`tls.mode` `verify-client`); `trust` lets anyone who reaches the port in as any user',
    }),
    users: defaulted(
      Type.Array(
        mapping({
          name: Type.String({ ...NON_EMPTY, description: 'a user (role) name, as clients log in' }),
          password: PASSWORD,
          passwordEnv: PASSWORD_ENV,
        }),
        { default: [], description: 'users and their passwords: exactly one of `password` or `passwordEnv` each; the password also logs in to the server' },
      ),
    ),
    file: Type.Optional(
      Type.String({
        ...NON_EMPTY,
        description: "a file in PgBouncer's `userlist.txt` format (`\"user\" \"secret\"`: a password, an md5 hash or a SCRAM verifier), read at start and on reload; `users` wins",
      }),
    ),
    query: Type.Optional(
      mapping(
        {
          user: Type.String({ ...NON_EMPTY, description: 'the role the lookup logs in as: give it nothing but EXECUTE on the lookup function' }),
          password: PASSWORD,
          passwordEnv: PASSWORD_ENV,
          database: defaulted(Type.String({ ...NON_EMPTY, default: 'postgres', description: 'the database the lookup runs in' })),
          sql: defaulted(
            Type.String({
              ...NON_EMPTY,
              default: AUTH_QUERY_SQL,
              description:
                "the lookup, with the user name as `$1`; it returns no row or one, whose second column is the role's SCRAM verifier or md5 hash (NULL: no password). The default reads `pg_authid` (superuser only); the README shows a `SECURITY DEFINER` function for a least-privileged role",
            }),
          ),
          cacheMs: ms(NON_NEGATIVE, 10_000, 'how long a lookup answers for the same user before it is asked again (`0`: every login)'),
        },
        {
          description:
            "look up passwords in the database itself, as PgBouncer's `auth_query`, for users neither `users` nor `file` names; the lookup holds one server connection, taken from the cap, as its own service `pgbudget:auth_query`",
        },
      ),
    ),
  },
  { default: {}, description: 'client authentication' },
);

const ADMIN_LISTEN = '127.0.0.1:9187';

// "host:port" as before, or a mapping that also names a bearer token. Inside
// a union ajv fills in no defaults: validateConfig does (docDefault).
const AdminSchema = defaulted(
  Type.Union(
    [
      Type.String({ ...NON_EMPTY, format: 'host-port' }),
      mapping({
        listen: Type.Optional(
          Type.String({ ...NON_EMPTY, format: 'host-port', docDefault: `\`${ADMIN_LISTEN}\``, description: 'where it listens (`host:port`)' }),
        ),
        tokenEnv: Type.Optional(
          Type.String({ ...NON_EMPTY, description: 'name of an environment variable that holds the bearer token, read at start and on reload' }),
        ),
        tokenFile: Type.Optional(
          Type.String({ ...NON_EMPTY, description: 'a file that holds the token (a trailing newline is dropped), read at start and on reload; not with `tokenEnv`' }),
        ),
        metricsNeedToken: Type.Optional(
          Type.Boolean({ docDefault: '`false`', description: '`/metrics` asks for the token too; `/healthz` and `/readyz` never do' }),
        ),
      }),
    ],
    {
      default: ADMIN_LISTEN,
      mustBe: '"host:port" or a mapping',
      description:
        'metrics and health HTTP server: `host:port`, or a mapping with `listen` and a token that every route but `/healthz`, `/readyz` and (by default) `/metrics` asks for as `Authorization: Bearer <token>` (`401` otherwise)',
    },
  ),
);

/** A name, or a list of them (any matches). */
const matchList = (what: string) =>
  Type.Optional(
    Type.Union([Type.String(NON_EMPTY), Type.Array(Type.String(NON_EMPTY), { minItems: 1 })], {
      mustBe: 'a non-empty string or a non-empty list of them',
      description: `the client's startup parameter ${what} must equal this, or one of this list`,
    }),
  );

const TlsSchema = mapping(
  {
    mode: defaulted(
      Type.Unsafe<TlsMode>({
        enum: ['disable', 'allow', 'require', 'verify-client'],
        docDefault: '`allow` with a `cert`, else `disable`',
        description:
          'towards clients: `allow` answers SSLRequest with `S`; `require` refuses clients without TLS (`28000`); `verify-client` also wants a client certificate signed by `ca`',
      }),
    ),
    cert: Type.Optional(Type.String({ ...NON_EMPTY, description: "the server certificate (PEM file), read at start and on reload" })),
    key: Type.Optional(Type.String({ ...NON_EMPTY, description: 'its private key (PEM file)' })),
    ca: Type.Optional(Type.String({ ...NON_EMPTY, description: 'CA certificates (PEM file) that client certificates must chain to' })),
  },
  { default: {}, description: 'TLS towards clients' },
);

const ServiceSchema = mapping({
  name: Type.String({ ...NON_EMPTY, description: 'unique; the `service` label of every metric' }),
  match: defaulted(
    mapping(
      {
        user: matchList('`user`'),
        database: matchList('`database`'),
        applicationName: matchKey('`application_name`'),
      },
      { default: {}, description: 'which clients the service takes: every key given must match; `{}` takes every client' },
    ),
  ),
  budget: Type.Integer({ ...POSITIVE, description: 'the most server connections the service may hold (in use, idle, opening)' }),
  enforce: defaulted(
    Type.Boolean({
      default: true,
      description:
        '`false`: a dry run (see Dry-run budgets): the budget is not enforced, only counted (`pgbudget_would_wait_total`, `pgbudget_would_reject_total`), and beyond it the service borrows from the cap what no other service needs; the cap is always enforced',
    }),
  ),
  poolMode: oneOf<PoolMode>(['session', 'transaction'], {
    default: 'session',
    description: 'a server connection is held for the whole client session, or for one transaction',
  }),
  onSessionState: oneOf<OnSessionState>(['pin', 'error'], {
    default: 'pin',
    description: 'transaction mode, on session state: pin the client to its server connection, or refuse the statement (`0A000`)',
  }),
  queue: defaulted(
    mapping(
      {
        maxWaiting: defaulted(
          Type.Integer({ ...NON_NEGATIVE, default: 1000, description: 'clients that may wait; past that, an immediate `53300`' }),
        ),
        timeoutMs: ms(POSITIVE, 30_000, 'how long a client may wait for a server connection, then `53300`'),
      },
      { default: {} },
    ),
  ),
  idleInTransactionTimeoutMs: defaulted(
    Type.Integer({ ...OFF_OR_MS, docDefault: 'the global value', description: "this service's own limit (`0`: off)" }),
  ),
  queryTimeoutMs: defaulted(
    Type.Integer({ ...OFF_OR_MS, docDefault: 'the global value', description: "this service's own limit (`0`: off)" }),
  ),
  surge: defaulted(
    mapping(
      {
        forMs: defaulted(Type.Integer({ ...NON_NEGATIVE, docDefault: 'the global `surge.forMs`', description: "this service's own value" })),
        factor: defaulted(Type.Number({ ...FACTOR, docDefault: 'the global `surge.factor`', description: "this service's own value" })),
        minRatePerSecond: defaulted(
          Type.Number({ ...RATE, docDefault: 'the global `surge.minRatePerSecond`', description: "this service's own value" }),
        ),
      },
      { default: {} },
    ),
  ),
  auth: defaulted(
    mapping(
      {
        method: defaulted(
          Type.Unsafe<AuthMethod>({ enum: AUTH_METHODS, docDefault: 'the global `auth.method`', description: "this service's own method" }),
        ),
      },
      { default: {} },
    ),
  ),
  maxClients: defaulted(
    Type.Integer({ ...NON_NEGATIVE, default: 0, description: 'the most clients of this service connected at once, past it `53300` (`0`: only the global `maxClients`)' }),
  ),
  password: Type.Optional(
    Type.String({ ...NON_EMPTY, description: "password for the server's cleartext, md5 or SCRAM-SHA-256 login" }),
  ),
  passwordEnv: Type.Optional(
    Type.String({ ...NON_EMPTY, description: 'name of an environment variable that holds that password' }),
  ),
});

export const ConfigSchema = mapping({
  listen: address('127.0.0.1:6432', 'where clients connect (`host:port`)'),
  admin: AdminSchema,
  logLevel: oneOf<LogLevel>(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], {
    default: 'info',
    description: '`--log-level` or `PGBUDGET_LOG_LEVEL` override',
  }),
  startupTimeoutMs: ms(POSITIVE, 10_000, 'a client that has not sent its startup packet by then is closed (`08P01`)'),
  maxClients: defaulted(
    Type.Integer({
      ...POSITIVE,
      default: 20_000,
      description: 'the most client connections at once, authenticated or not; past it a new one gets `53300` `sorry, too many clients already`',
    }),
  ),
  authTimeoutMs: ms(POSITIVE, 10_000, 'a client that has not finished authenticating by then is closed (`08P01`)'),
  auth: defaulted(AuthSchema),
  tls: defaulted(TlsSchema),
  shutdownTimeoutMs: ms(NON_NEGATIVE, 30_000, 'on SIGTERM, how long clients inside a transaction may take to finish'),
  serverIdleTimeoutMs: ms(POSITIVE, 600_000, 'an idle server connection is closed after this long unused'),
  serverLifetimeMs: ms(POSITIVE, 3_600_000, 'a server connection older than this is closed when next idle'),
  maxMessageBytes: defaulted(
    Type.Integer({
      minimum: 1024,
      mustBe: 'an integer >= 1024',
      default: 256 * 1024 * 1024,
      description: 'a client message longer than this is a protocol violation (`08P01`)',
    }),
  ),
  maxPreparedStatements: defaulted(
    Type.Integer({
      ...POSITIVE,
      default: 100,
      description: 'per server connection in transaction mode (at least 1); the least recently used are closed',
    }),
  ),
  serverApplicationName: oneOf<ServerApplicationName>(['client', 'service'], {
    default: 'client',
    description:
      "what `application_name` a server connection has while it serves a client: `client`, the client's own (`SHOW application_name` and `pg_stat_activity` as on a direct connection); `service`, `pgbudget:<service>` (which service holds it, in `pg_stat_activity`)",
  }),
  tcpKeepaliveMs: ms(
    OFF_OR_MS,
    30_000,
    'TCP keepalive idle time on client and server sockets (`0`: off); a peer that vanished without a FIN is noticed after this plus 10 probes 1 s apart',
  ),
  tcpUserTimeoutMs: Type.Optional(
    Type.Integer({
      ...OFF_OR_MS,
      docDefault: '`tcpKeepaliveMs` + 10 s',
      description:
        "TCP_USER_TIMEOUT on client and server sockets (Linux): a peer that acknowledges nothing sent to it this long is dropped, as is a client that reads nothing this long while a reply waits. Keepalive does not probe while bytes are in flight, so without it a peer that vanished then holds its slot for the kernel's retransmissions (`tcp_retries2`, about 15 min). `0`: the kernel's default; with keepalive off, the default is `0`",
    }),
  ),
  clientIdleTimeoutMs: ms(
    OFF_OR_MS,
    0,
    'a client outside any transaction that sends nothing this long is closed with `57P05`, as `idle_session_timeout` would (`0`: off)',
  ),
  idleInTransactionTimeoutMs: ms(
    OFF_OR_MS,
    0,
    'a client inside a transaction (status `T` or `E`) that sends nothing this long is closed with `25P03`; its server connection is closed (the server rolls back) and the slot freed (`0`: off)',
  ),
  queryTimeoutMs: ms(
    OFF_OR_MS,
    0,
    "a statement running longer (time in the queue not counted) is cancelled with the server's cancel key; the client gets `57014` `canceling statement due to statement timeout` (`0`: off)",
  ),
  surge: defaulted(
    mapping(
      {
        forMs: ms(
          NON_NEGATIVE,
          10_000,
          'a service whose demand (clients holding a server connection plus clients waiting for one) stays above its budget this long is surging; an episode ends after this long with neither condition',
        ),
        factor: defaulted(
          Type.Number({
            ...FACTOR,
            default: 5,
            description:
              'a service whose client connect rate over the last minute is at least this many times its rate over the 15 minutes before (and above `minRatePerSecond`) is surging',
          }),
        ),
        minRatePerSecond: defaulted(
          Type.Number({ ...RATE, default: 1, description: 'the connect rate (per second, over the last minute) that `factor` needs to be above to call it a surge' }),
        ),
      },
      { default: {}, description: 'surge detection (see Surges): one warning per episode, `pgbudget_service_surge` 1 while it lasts; `services[].surge` overrides each field' },
    ),
  ),
  upstream: defaulted(
    mapping(
      {
        host: defaulted(Type.String({ ...NON_EMPTY, default: '127.0.0.1', description: 'the PostgreSQL server' })),
        port: defaulted(Type.Integer({ ...PORT, default: 5432, description: "the PostgreSQL server's port" })),
        maxConnections: defaulted(
          Type.Union([Type.Integer(POSITIVE), Type.Literal('auto')], {
            default: 40,
            mustBe: 'a positive integer or "auto"',
            description:
              "the cap: server connections of all services together; `auto`: what the database has free (`max_connections` less the reserved slots and the connections that are not pgbudget's, read every `headroom.intervalMs`) less `autoMargin`, at least 1; needs `headroom.user`",
          }),
        ),
        autoMargin: defaulted(
          Type.Integer({
            ...NON_NEGATIVE,
            default: 5,
            description: "with `auto`: slots left free for connections that are not pgbudget's, for those that come between two readings",
          }),
        ),
        autoCeiling: Type.Optional(Type.Integer({ ...POSITIVE, description: 'with `auto`: the cap never goes above this' })),
        autoInitial: defaulted(
          Type.Integer({ ...POSITIVE, default: 10, description: 'with `auto`: the cap until a reading has succeeded (at most `autoCeiling`)' }),
        ),
        connectTimeoutMs: ms(POSITIVE, 5_000, 'connect plus login to the server'),
        tls: defaulted(
          mapping(
            {
              mode: oneOf<UpstreamTlsMode>(['disable', 'prefer', 'require', 'verify-ca', 'verify-full'], {
                default: 'prefer',
                description:
                  "TLS towards the server, as libpq's `sslmode`: `prefer` uses it when the server offers it; `require` refuses a server without it; `verify-ca` also checks the server's certificate against `ca`; `verify-full` also checks it names `upstream.host`",
              }),
              ca: Type.Optional(Type.String({ ...NON_EMPTY, description: "CA certificates (PEM file) the server's certificate must chain to; without it, Node's bundled roots" })),
              cert: Type.Optional(Type.String({ ...NON_EMPTY, description: 'a client certificate (PEM file) for servers that ask for one' })),
              key: Type.Optional(Type.String({ ...NON_EMPTY, description: 'its private key (PEM file)' })),
            },
            { default: {}, description: 'TLS towards the server; files read at start and on reload' },
          ),
        ),
      },
      { default: {} },
    ),
  ),
  headroom: defaulted(
    mapping(
      {
        intervalMs: ms({ minimum: 100, mustBe: 'an integer >= 100 (milliseconds)' }, 5_000, 'how often the database is read'),
        user: Type.Optional(
          Type.String({
            ...NON_EMPTY,
            description:
              "the role the reading logs in as: LOGIN is enough (with `pg_monitor`, other roles' connections are told from background workers exactly); without it, no readings",
          }),
        ),
        password: PASSWORD,
        passwordEnv: PASSWORD_ENV,
        database: defaulted(Type.String({ ...NON_EMPTY, default: 'postgres', description: 'the database the reading logs in to' })),
      },
      {
        default: {},
        description:
          "reads the database's `max_connections`, `superuser_reserved_connections`, `reserved_connections` and the client connections that are not pgbudget's, for the `pgbudget_database_*` metrics and `upstream.maxConnections: auto`; the reading holds one server connection, taken from the cap, as its own service `pgbudget:headroom`; without `password` or `passwordEnv` it logs in with what `auth.users` or `auth.file` give for `user`",
      },
    ),
  ),
  coordination: Type.Optional(
    mapping(
      {
        redis: mapping(
          {
            url: Type.Optional(Type.String({ ...NON_EMPTY, description: 'the Redis server holding the leases, `redis://[user:password@]host:port[/db]` (`rediss://` for TLS)' })),
            urlEnv: Type.Optional(Type.String({ ...NON_EMPTY, description: 'name of an environment variable that holds the URL (it may carry a password)' })),
            keyPrefix: defaulted(Type.String({ ...NON_EMPTY, default: 'pgbudget:', description: 'what every key pgbudget writes starts with' })),
            commandTimeoutMs: ms(POSITIVE, 1_000, 'a Redis call not answered within this has failed (and at most `leaseTtlMs / 4`)'),
          },
          { description: 'where the leases are kept; one of `url` and `urlEnv`' },
        ),
        cluster: Type.String({ ...NON_EMPTY, pattern: '^[^{}]+$', mustBe: 'a name without braces', description: 'instances with the same name share every service budget and the cap' }),
        leaseTtlMs: ms(
          { minimum: 1000, mustBe: 'an integer >= 1000 (milliseconds)' },
          10_000,
          "a lease not renewed within this is the cluster's again: how long the room of an instance that died stays taken; renewed every third of it",
        ),
        onRedisDown: oneOf<OnRedisDown>(['static', 'hold'], {
          default: 'static',
          description:
            'while Redis cannot be reached: `static` keeps each service to `budget / expectedReplicas` and the cap to `cap / expectedReplicas` (at least 1), growing to that only `leaseTtlMs` after losing touch; `hold` keeps what is held and opens nothing new',
        }),
        expectedReplicas: defaulted(Type.Integer({ ...POSITIVE, default: 1, description: 'how many instances share the cluster, for the `static` fallback' })),
      },
      {
        description:
          'one budget per service and one cap for every pgbudget instance of a cluster, through leases in Redis (see Coordination); without it each instance keeps its own',
      },
    ),
  ),
  defaultService: Type.Optional(
    Type.String({ ...NON_EMPTY, description: 'the service for clients no `match` takes; without it they are refused' }),
  ),
  services: Type.Array(ServiceSchema, { minItems: 1, description: 'at least one' }),
});

/** The document once ajv has passed it and filled in its defaults. */
type Document = Static<typeof ConfigSchema>;

// Compile-time check that the schema and types/config.ts describe the same
// Config (every key, its optionality and its type), addresses aside.
type Full<T> = T extends readonly (infer E)[] ? Full<E>[] : T extends object ? { [K in keyof T]-?: Full<T[K]> } : T;
type Same<A, B> = [A, Full<A>] extends [B, Full<B>] ? ([B, Full<B>] extends [A, Full<A>] ? true : false) : false;
const schemaIsConfig: Same<Omit<Document, 'listen' | 'admin'> & { listen: HostPort; admin: AdminConfig }, Config> = true;
void schemaIsConfig;

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(problems.join('\n'));
  }
}

export function parseHostPort(s: string): HostPort {
  const i = s.lastIndexOf(':');
  return { host: s.slice(0, i).replace(/^\[(.*)\]$/, '$1'), port: Number(s.slice(i + 1)) };
}

/** "host:port", the host not empty and the port at most 65535 (0: any free port). */
function isHostPort(s: string): boolean {
  const m = /^(.+):(\d+)$/.exec(s);
  return m !== null && Number(m[2]) <= 65535;
}

// The two annotation keywords are read back from the schema: by the wording
// below, and by the README's table (docs.ts).
export const AJV_OPTIONS = {
  allErrors: true,
  useDefaults: true,
  strict: true,
  keywords: ['mustBe', 'docDefault'],
  formats: { 'host-port': isHostPort },
};
// Compiled once, at load, as cheaply as ajv allows: without checking the
// schema against JSON Schema's meta-schema (test/unit/config.test.ts
// does) and without optimising code that runs a few times per process.
const check = new Ajv({ ...AJV_OPTIONS, validateSchema: false, code: { optimize: false } }).compile<Document>(ConfigSchema);

type Segment = string | number;
interface Problem {
  at: Segment[];
  what: string;
}
type Node = { type?: string; properties?: Record<string, Node>; items?: Node; anyOf?: Node[]; enum?: string[]; mustBe?: string };

/** The node itself, or the branch of a union (a string or a mapping, a string or a list), that has `key`. */
function branchWith(node: Node | undefined, key: 'properties' | 'items'): Node | undefined {
  return node?.[key] !== undefined ? node : node?.anyOf?.find((b) => b[key] !== undefined);
}

/** The schema of the value at `at`, and the position of each step in declaration order (unknown fields first). */
function walk(at: Segment[]): { node: Node | undefined; rank: number[] } {
  let node: Node | undefined = ConfigSchema as Node;
  const rank: number[] = [];
  for (const seg of at) {
    if (typeof seg === 'number') {
      rank.push(seg);
      node = branchWith(node, 'items')?.items;
    } else {
      const m = branchWith(node, 'properties');
      rank.push(Object.keys(m?.properties ?? {}).indexOf(seg));
      node = m?.properties?.[seg];
    }
  }
  return { node, rank };
}

function pathSegments(instancePath: string): Segment[] {
  return instancePath
    .split('/')
    .slice(1)
    .map((s) => (/^\d+$/.test(s) ? Number(s) : s.replace(/~1/g, '/').replace(/~0/g, '~')));
}

function valueAt(doc: unknown, at: Segment[]): unknown {
  return at.reduce<unknown>((v, seg) => (v as Record<Segment, unknown>)[seg], doc);
}

function kindOf(v: unknown): string {
  return Array.isArray(v) ? 'array' : v === null ? 'null' : typeof v;
}

/**
 * ajv reports a failed union once for the union and once for every branch.
 * The branch of the value's own kind says what is wrong (`admin: { lisen: … }`
 * is an unknown field, not a wrong type); a value of no branch's kind is
 * worded by the union itself.
 */
function fromFittingBranches(errors: ErrorObject[], doc: unknown): ErrorObject[] {
  const unions = errors
    .filter((e) => e.keyword === 'anyOf')
    .map((e) => {
      const at = pathSegments(e.instancePath);
      const kind = kindOf(valueAt(doc, at));
      return { error: e, fit: walk(at).node?.anyOf?.findIndex((b) => b.type === kind) ?? -1 };
    });
  const within = (e: ErrorObject, u: ErrorObject) =>
    e.schemaPath.startsWith(`${u.schemaPath}/`) && `${e.instancePath}/`.startsWith(`${u.instancePath}/`);
  return errors.filter((e) =>
    unions.every(({ error: u, fit }) => (e === u ? fit === -1 : !within(e, u) || e.schemaPath.startsWith(`${u.schemaPath}/${fit}/`))),
  );
}

// What a value of each kind must be; every string and list in the schema is non-empty.
const MUST_BE: Record<string, string> = { object: 'a mapping', array: 'a non-empty list', string: 'a non-empty string', boolean: 'true or false' };
const FORMAT_MUST_BE: Record<string, string> = { 'host-port': '"host:port"' };

function mustBe(node: Node | undefined): string {
  if (node?.mustBe) return node.mustBe;
  if (node?.enum) return `one of ${node.enum.join(', ')}`;
  return MUST_BE[node?.type ?? ''] ?? 'valid';
}

function worded(e: ErrorObject, doc: unknown): Problem {
  const at = pathSegments(e.instancePath);
  if (e.keyword === 'additionalProperties') return { at: [...at, e.params.additionalProperty], what: 'unknown field' };
  if (e.keyword === 'required') {
    const field = [...at, e.params.missingProperty as string];
    // A missing list is worded as an empty one.
    return { at: field, what: walk(field).node?.type === 'array' ? `must be ${MUST_BE.array}` : 'is required' };
  }
  const what = e.keyword === 'format' ? FORMAT_MUST_BE[e.params.format] : mustBe(walk(at).node);
  return { at, what: `must be ${what} (got ${show(valueAt(doc, at))})` };
}

/** The rules a schema cannot say: unique names, one source of password or token, defaultService names a service. */
function crossField(doc: Record<string, unknown>): Problem[] {
  const problems: Problem[] = [];
  if (isMapping(doc.admin)) {
    const { tokenEnv, tokenFile, metricsNeedToken } = doc.admin;
    if (isName(tokenEnv) && isName(tokenFile)) problems.push({ at: ['admin', 'tokenFile'], what: 'cannot be set together with tokenEnv' });
    if (metricsNeedToken === true && !isName(tokenEnv) && !isName(tokenFile)) {
      problems.push({ at: ['admin', 'metricsNeedToken'], what: 'needs a token: set tokenEnv or tokenFile' });
    }
  }
  const names = new Set<unknown>();
  (Array.isArray(doc.services) ? doc.services : []).forEach((s: unknown, i: number) => {
    if (!isMapping(s)) return;
    if (isName(s.name)) {
      if (names.has(s.name)) problems.push({ at: ['services', i, 'name'], what: `must be unique (got ${show(s.name)})` });
      names.add(s.name);
      if (s.name === 'pgbudget:auth_query') problems.push({ at: ['services', i, 'name'], what: 'is the name of the auth.query lookup; choose another' });
      if (s.name === 'pgbudget:headroom') problems.push({ at: ['services', i, 'name'], what: 'is the name of the headroom reading; choose another' });
    }
    if (isName(s.password) && isName(s.passwordEnv)) {
      problems.push({ at: ['services', i, 'passwordEnv'], what: 'cannot be set together with password' });
    }
  });
  const auth = isMapping(doc.auth) ? doc.auth : {};
  const users = new Set<unknown>();
  (Array.isArray(auth.users) ? auth.users : []).forEach((u: unknown, i: number) => {
    if (!isMapping(u)) return;
    if (isName(u.name)) {
      if (users.has(u.name)) problems.push({ at: ['auth', 'users', i, 'name'], what: `must be unique (got ${show(u.name)})` });
      users.add(u.name);
    }
    if (isName(u.password) === isName(u.passwordEnv)) {
      problems.push({ at: ['auth', 'users', i, 'password'], what: 'exactly one of password or passwordEnv must be set' });
    }
  });
  const query = isMapping(auth.query) ? auth.query : null;
  if (query && isName(query.password) && isName(query.passwordEnv)) {
    problems.push({ at: ['auth', 'query', 'passwordEnv'], what: 'cannot be set together with password' });
  }
  const headroom = isMapping(doc.headroom) ? doc.headroom : {};
  if (isName(headroom.password) && isName(headroom.passwordEnv)) {
    problems.push({ at: ['headroom', 'passwordEnv'], what: 'cannot be set together with password' });
  }
  if (isMapping(doc.upstream) && doc.upstream.maxConnections === 'auto' && !isName(headroom.user)) {
    problems.push({ at: ['headroom', 'user'], what: 'must be set for upstream.maxConnections "auto" (the role that reads what the database has free)' });
  }
  const tlsDoc = isMapping(doc.tls) ? doc.tls : {};
  const tlsMode = tlsDoc.mode ?? (isName(tlsDoc.cert) ? 'allow' : 'disable');
  if (tlsMode !== 'disable' && !(isName(tlsDoc.cert) && isName(tlsDoc.key))) {
    problems.push({ at: ['tls', 'cert'], what: `and tls.key must be set for tls.mode ${show(tlsMode)}` });
  }
  const upTls = isMapping(doc.upstream) && isMapping(doc.upstream.tls) ? doc.upstream.tls : {};
  if (isName(upTls.cert) !== isName(upTls.key)) problems.push({ at: ['upstream', 'tls', isName(upTls.cert) ? 'key' : 'cert'], what: 'must be set with upstream.tls.' + (isName(upTls.cert) ? 'cert' : 'key') });
  if (tlsMode === 'verify-client' && !isName(tlsDoc.ca)) problems.push({ at: ['tls', 'ca'], what: 'must be set for tls.mode "verify-client"' });
  // A method that needs TLS, where TLS cannot be had.
  const globalMethod = isMapping(doc.auth) && typeof doc.auth.method === 'string' ? doc.auth.method : 'scram-sha-256';
  const methods: [Segment[], unknown][] = [[['auth', 'method'], globalMethod]];
  (Array.isArray(doc.services) ? doc.services : []).forEach((s: unknown, i: number) => {
    if (isMapping(s) && isMapping(s.auth) && s.auth.method !== undefined) methods.push([['services', i, 'auth', 'method'], s.auth.method]);
  });
  for (const [at, method] of methods) {
    if (method === 'password' && tlsMode === 'disable') problems.push({ at, what: 'password needs TLS: set tls.cert and tls.key' });
    if (method === 'cert' && tlsMode !== 'verify-client') problems.push({ at, what: 'cert needs tls.mode "verify-client"' });
  }
  const coordination = isMapping(doc.coordination) ? doc.coordination : null;
  const redis = coordination && isMapping(coordination.redis) ? coordination.redis : null;
  if (redis && isName(redis.url) === isName(redis.urlEnv)) {
    problems.push({ at: ['coordination', 'redis', 'url'], what: 'exactly one of url or urlEnv must be set' });
  }
  if (isName(doc.defaultService) && !names.has(doc.defaultService)) {
    problems.push({ at: ['defaultService'], what: `must name one of services[].name (got ${show(doc.defaultService)})` });
  }
  return problems;
}

/** Validates a parsed document and fills in defaults; throws ConfigError listing every problem. */
export function validateConfig(raw: unknown): Config {
  const problems: Problem[] = [];
  const top = raw ?? {};
  // ajv fills in defaults where it checks: on a copy, so that the caller's document stays as it was.
  let doc: Record<string, unknown> = {};
  if (isMapping(top)) doc = structuredClone(top);
  else problems.push({ at: [], what: `must be a mapping (got ${show(top)})` });
  if (!check(doc)) problems.push(...fromFittingBranches(check.errors!, doc).map((e) => worded(e, doc)));
  problems.push(...crossField(doc));
  if (problems.length > 0) throw new ConfigError(inOrder(problems));
  return filled(doc as Document);
}

/** One line per field, in the order the schema declares them; the first problem found for a field wins. */
function inOrder(problems: Problem[]): string[] {
  const byPath = new Map<string, { rank: number[]; line: string }>();
  for (const p of problems) {
    const path = pathOf(p.at);
    if (!byPath.has(path)) byPath.set(path, { rank: walk(p.at).rank, line: `${path}: ${p.what}` });
  }
  return [...byPath.values()].sort((a, b) => compareRanks(a.rank, b.rank)).map((p) => p.line);
}

function compareRanks(a: number[], b: number[]): number {
  for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

/** The global timeouts (and method, and surge settings) become each service's own unless it sets one, and addresses are parsed. */
function filled(doc: Document): Config {
  const { listen = ADMIN_LISTEN, metricsNeedToken = false, ...token } = typeof doc.admin === 'string' ? { listen: doc.admin } : doc.admin;
  for (const s of doc.services) {
    s.idleInTransactionTimeoutMs ??= doc.idleInTransactionTimeoutMs;
    s.queryTimeoutMs ??= doc.queryTimeoutMs;
    s.auth.method ??= doc.auth.method;
    s.surge.forMs ??= doc.surge.forMs;
    s.surge.factor ??= doc.surge.factor;
    s.surge.minRatePerSecond ??= doc.surge.minRatePerSecond;
  }
  doc.tls.mode ??= doc.tls.cert !== undefined ? 'allow' : 'disable';
  return { ...doc, listen: parseHostPort(doc.listen), admin: { ...parseHostPort(listen), ...token, metricsNeedToken } };
}

function pathOf(at: Segment[]): string {
  if (at.length === 0) return '(top level)';
  return at.map((s, i) => (typeof s === 'number' ? `[${s}]` : i === 0 ? s : `.${s}`)).join('');
}

function isMapping(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function isName(v: unknown): v is string {
  return typeof v === 'string' && v.length > 0;
}

function show(v: unknown): string {
  return typeof v === 'string' ? JSON.stringify(v) : v === undefined ? 'nothing' : JSON.stringify(v) ?? String(v);
}

/** `trust` where others may reach the port lets anyone in as any user: allowed when written, but said. */
export function trustWarning(config: Config): string | null {
  const trusting = config.services.filter((s) => s.auth.method === 'trust').map((s) => s.name);
  if (trusting.length === 0 || isLoopback(config.listen.host)) return null;
  return `auth.method trust on ${config.listen.host}: anyone who reaches the port logs in as any user (services: ${trusting.join(', ')})`;
}

/** An admin server others may reach, with no token: /status and /metrics are anyone's. */
export function adminWarning(config: Config): string | null {
  const { host, tokenEnv, tokenFile } = config.admin;
  if (tokenEnv !== undefined || tokenFile !== undefined || isLoopback(host)) return null;
  return `admin on ${host} without a token: anyone who reaches the port reads /status and /metrics (set admin.tokenEnv or admin.tokenFile)`;
}

/** What a config allows but should be said of it, at start and on reload. */
export function configWarnings(config: Config): string[] {
  return [overcommitWarning(config), trustWarning(config), adminWarning(config)].filter((w): w is string => w !== null);
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || host.startsWith('127.');
}

/** Budgets that add up to more than the cap are allowed (the cap still holds); say so. */
export function overcommitWarning(config: Config): string | null {
  const sum = config.services.reduce((n, s) => n + s.budget, 0);
  const { maxConnections, autoCeiling } = config.upstream;
  // An auto cap is known only by its ceiling; that it may fall below the budgets is its point.
  const cap = maxConnections === 'auto' ? autoCeiling : maxConnections;
  if (cap === undefined || sum <= cap) return null;
  const field = maxConnections === 'auto' ? 'upstream.autoCeiling' : 'upstream.maxConnections';
  return (
    `service budgets add up to ${sum}, more than ${field} ${cap}: ` +
    `the cap still holds; freed capacity is shared round-robin among waiting services`
  );
}
