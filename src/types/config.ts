// The shape of a validated configuration, shared by every layer. Imports
// nothing: client/ and server/ read these types without depending on
// config/, which parses and validates them (config/schema.ts).

export type PoolMode = 'session' | 'transaction';
export type OnSessionState = 'pin' | 'error';
/**
 * How clients prove who they are: a SCRAM-SHA-256 or md5 exchange against
 * a known password, the password itself (over TLS only), a client
 * certificate whose CN is the user, or not at all.
 */
export type AuthMethod = 'scram-sha-256' | 'md5' | 'password' | 'cert' | 'trust';

export interface AuthUser {
  name: string;
  password?: string;
  passwordEnv?: string;
}

export interface AuthConfig {
  method: AuthMethod;
  /** Users and their passwords, written in the config. */
  users: AuthUser[];
  /** A file in PgBouncer's userlist.txt format. */
  file?: string;
  /** Passwords looked up in the database itself (PgBouncer's auth_query). */
  query?: AuthQueryConfig;
}

export interface AuthQueryConfig {
  /** The lookup role. */
  user: string;
  password?: string;
  passwordEnv?: string;
  database: string;
  /** `$1` is the user name; the second column of its one row is the secret (NULL: none). */
  sql: string;
  /** How long an answer is reused (0: never). */
  cacheMs: number;
}

/** TLS towards clients: off; offered; required; required with a client certificate the CA signed. */
export type TlsMode = 'disable' | 'allow' | 'require' | 'verify-client';

export interface TlsConfig {
  /** `allow` when a certificate is set, else `disable`. */
  mode: TlsMode;
  cert?: string;
  key?: string;
  ca?: string;
}

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

export interface HostPort {
  host: string;
  port: number;
}

/**
 * The admin HTTP server: where it listens, and where its bearer token comes
 * from (neither tokenEnv nor tokenFile: no token, every route open).
 */
export interface AdminConfig extends HostPort {
  /** Name of an environment variable that holds the token. */
  tokenEnv?: string;
  /** A file that holds the token. */
  tokenFile?: string;
  /** /metrics asks for the token too; /healthz and /readyz never do. */
  metricsNeedToken: boolean;
}

export interface ServiceMatch {
  /** One name, or any of a list. */
  user?: string | string[];
  database?: string | string[];
  applicationName?: string;
}

/** When a service counts as surging (budget/surge.ts). */
export interface SurgeConfig {
  /** Demand above the budget this long starts an episode; calm this long ends one. */
  forMs: number;
  /** The last minute's client connect rate against the 15 minutes before it. */
  factor: number;
  /** The last minute's connect rate must also be above this (per second). */
  minRatePerSecond: number;
}

export interface ServiceConfig {
  name: string;
  match: ServiceMatch;
  budget: number;
  /** false: a dry run, the budget is counted but not enforced (the cap still is). */
  enforce: boolean;
  poolMode: PoolMode;
  onSessionState: OnSessionState;
  queue: { maxWaiting: number; timeoutMs: number };
  /** This service's own value, or the global one (0: off). */
  idleInTransactionTimeoutMs: number;
  /** This service's own value, or the global one (0: off). */
  queryTimeoutMs: number;
  /** This service's own method, or the global one. */
  auth: { method: AuthMethod };
  /** This service's own surge settings, each field the global one unless set. */
  surge: SurgeConfig;
  /** The most clients of this service connected at once (0: only the global limit). */
  maxClients: number;
  password?: string;
  passwordEnv?: string;
}

/** TLS towards the server, libpq's sslmode values: off; tried; required; required with the CA checked; and the host name too. */
export type UpstreamTlsMode = 'disable' | 'prefer' | 'require' | 'verify-ca' | 'verify-full';

export interface UpstreamTlsConfig {
  mode: UpstreamTlsMode;
  /** CA certificates the server's must chain to (verify-ca, verify-full). */
  ca?: string;
  /** A client certificate and key, for a server that asks for one. */
  cert?: string;
  key?: string;
}

export interface UpstreamConfig {
  host: string;
  port: number;
  /** The cap; `auto`: what the database has free (headroom readings) less autoMargin. */
  maxConnections: number | 'auto';
  /** With `auto`: slots left free for connections that are not pgbudget's. */
  autoMargin: number;
  /** With `auto`: the cap never goes above this. */
  autoCeiling?: number;
  /** With `auto`: the cap until the first reading has succeeded. */
  autoInitial: number;
  connectTimeoutMs: number;
  tls: UpstreamTlsConfig;
}

/** Readings of the database's connection limits and of the connections that are not pgbudget's. */
export interface HeadroomConfig {
  intervalMs: number;
  /** The role the reading logs in as; no readings without it. */
  user?: string;
  password?: string;
  passwordEnv?: string;
  database: string;
}

export type ServerApplicationName = 'client' | 'service';

/** What an instance does while it cannot reach Redis: keep to a static share, or keep what it holds. */
export type OnRedisDown = 'static' | 'hold';

/** One budget and cap shared by every instance of a cluster, through leases in Redis. */
export interface CoordinationConfig {
  redis: { url?: string; urlEnv?: string; keyPrefix: string; commandTimeoutMs: number };
  /** Instances with the same name share the budgets and the cap. */
  cluster: string;
  leaseTtlMs: number;
  onRedisDown: OnRedisDown;
  /** The static fallback divides budgets and the cap by this. */
  expectedReplicas: number;
}

export interface Config {
  listen: HostPort;
  admin: AdminConfig;
  logLevel: LogLevel;
  startupTimeoutMs: number;
  /** The most client connections at once, authenticated or not; past it, 53300. */
  maxClients: number;
  /** A client that has not authenticated by then is closed (08P01). */
  authTimeoutMs: number;
  auth: AuthConfig;
  tls: TlsConfig;
  shutdownTimeoutMs: number;
  serverIdleTimeoutMs: number;
  serverLifetimeMs: number;
  maxMessageBytes: number;
  maxPreparedStatements: number;
  /** The application_name of a server connection while it serves a client: the client's own, or pgbudget:<service>. */
  serverApplicationName: ServerApplicationName;
  /** TCP keepalive idle time on client and server sockets (0: off). */
  tcpKeepaliveMs: number;
  /** TCP_USER_TIMEOUT on client and server sockets (0: the kernel's default); absent: tcpKeepaliveMs + 10 s. */
  tcpUserTimeoutMs?: number;
  /** A client outside any transaction that sends nothing this long is closed with 57P05 (0: off). */
  clientIdleTimeoutMs: number;
  /** A client inside a transaction that sends nothing this long is closed with 25P03 (0: off). */
  idleInTransactionTimeoutMs: number;
  /** A statement running this long is cancelled with the server's cancel key (0: off). */
  queryTimeoutMs: number;
  surge: SurgeConfig;
  upstream: UpstreamConfig;
  headroom: HeadroomConfig;
  coordination?: CoordinationConfig;
  defaultService?: string;
  services: ServiceConfig[];
}
