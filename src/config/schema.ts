// The configuration: its shape, every default, and validation that names the
// exact field that is wrong. Pure: parsing text and reading files is load.ts.

import type {
  Config,
  HostPort,
  LogLevel,
  OnSessionState,
  PoolMode,
  ServiceConfig,
  ServiceMatch,
  UpstreamConfig,
} from '../types/config.js';

export type { Config, HostPort, LogLevel, OnSessionState, PoolMode, ServiceConfig, ServiceMatch, UpstreamConfig };

export const DEFAULTS = {
  listen: '127.0.0.1:6432',
  admin: '127.0.0.1:9187',
  logLevel: 'info' as LogLevel,
  startupTimeoutMs: 10_000,
  shutdownTimeoutMs: 30_000,
  serverIdleTimeoutMs: 600_000,
  serverLifetimeMs: 3_600_000,
  maxMessageBytes: 256 * 1024 * 1024,
  maxPreparedStatements: 100,
  tcpKeepaliveMs: 30_000,
  clientIdleTimeoutMs: 0,
  idleInTransactionTimeoutMs: 0,
  queryTimeoutMs: 0,
  upstream: { host: '127.0.0.1', port: 5432, maxConnections: 40, connectTimeoutMs: 5_000 },
  service: { poolMode: 'session' as PoolMode, onSessionState: 'pin' as OnSessionState, queue: { maxWaiting: 1000, timeoutMs: 30_000 } },
} as const;

const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];
const POOL_MODES: readonly PoolMode[] = ['session', 'transaction'];
const ON_SESSION_STATE: readonly OnSessionState[] = ['pin', 'error'];

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(problems.join('\n'));
  }
}

type Obj = Record<string, unknown>;

/** Collects problems as "path: what is wrong (got X)" instead of stopping at the first. */
class Checker {
  readonly problems: string[] = [];

  fail(path: string, what: string, got?: unknown): void {
    this.problems.push(got === undefined ? `${path}: ${what}` : `${path}: ${what} (got ${show(got)})`);
  }

  object(path: string, v: unknown): Obj | undefined {
    if (v !== null && typeof v === 'object' && !Array.isArray(v)) return v as Obj;
    this.fail(path, 'must be a mapping', v);
    return undefined;
  }

  known(path: string, o: Obj, fields: readonly string[]): void {
    for (const k of Object.keys(o)) if (!fields.includes(k)) this.fail(prefix(path, k), 'unknown field');
  }

  string(path: string, v: unknown, def?: string): string | undefined {
    if (v === undefined) {
      if (def === undefined) this.fail(path, 'is required');
      return def;
    }
    if (typeof v === 'string' && v.length > 0) return v;
    this.fail(path, 'must be a non-empty string', v);
    return def;
  }

  int(path: string, v: unknown, def: number | undefined, min: number, what: string): number {
    if (v === undefined) {
      if (def === undefined) this.fail(path, 'is required');
      return def ?? min;
    }
    if (typeof v === 'number' && Number.isInteger(v) && v >= min) return v;
    this.fail(path, `must be ${what}`, v);
    return def ?? min;
  }

  oneOf<T extends string>(path: string, v: unknown, allowed: readonly T[], def: T): T {
    if (v === undefined) return def;
    if (typeof v === 'string' && (allowed as readonly string[]).includes(v)) return v as T;
    this.fail(path, `must be one of ${allowed.join(', ')}`, v);
    return def;
  }

  hostPort(path: string, v: unknown, def: string): HostPort {
    const s = this.string(path, v, def) ?? def;
    const m = /^(.*):(\d+)$/.exec(s);
    const port = m ? Number(m[2]) : NaN;
    if (!m || !m[1] || port > 65535) {
      this.fail(path, 'must be "host:port"', v);
      return parseHostPort(def);
    }
    return { host: m[1].replace(/^\[(.*)\]$/, '$1'), port };
  }
}

function prefix(path: string, k: string): string {
  return path ? `${path}.${k}` : k;
}

function show(v: unknown): string {
  return typeof v === 'string' ? JSON.stringify(v) : v === undefined ? 'nothing' : JSON.stringify(v) ?? String(v);
}

export function parseHostPort(s: string): HostPort {
  const i = s.lastIndexOf(':');
  return { host: s.slice(0, i).replace(/^\[(.*)\]$/, '$1'), port: Number(s.slice(i + 1)) };
}

const TOP_FIELDS = [
  'listen',
  'admin',
  'logLevel',
  'startupTimeoutMs',
  'shutdownTimeoutMs',
  'serverIdleTimeoutMs',
  'serverLifetimeMs',
  'maxMessageBytes',
  'maxPreparedStatements',
  'tcpKeepaliveMs',
  'clientIdleTimeoutMs',
  'idleInTransactionTimeoutMs',
  'queryTimeoutMs',
  'upstream',
  'defaultService',
  'services',
] as const;
const UPSTREAM_FIELDS = ['host', 'port', 'maxConnections', 'connectTimeoutMs'] as const;
const SERVICE_FIELDS = [
  'name',
  'match',
  'budget',
  'poolMode',
  'onSessionState',
  'queue',
  'idleInTransactionTimeoutMs',
  'queryTimeoutMs',
  'password',
  'passwordEnv',
] as const;
const MATCH_FIELDS = ['user', 'database', 'applicationName'] as const;
const QUEUE_FIELDS = ['maxWaiting', 'timeoutMs'] as const;

const POSITIVE = 'a positive integer';
const NON_NEGATIVE = 'a non-negative integer';
const OFF_OR_MS = 'a non-negative integer (milliseconds; 0 is off)';

/** Validates a parsed document and fills in defaults; throws ConfigError listing every problem. */
export function validateConfig(raw: unknown): Config {
  const c = new Checker();
  const top = c.object('(top level)', raw ?? {}) ?? {};
  c.known('', top, TOP_FIELDS);
  const idleInTransactionTimeoutMs = c.int(
    'idleInTransactionTimeoutMs',
    top.idleInTransactionTimeoutMs,
    DEFAULTS.idleInTransactionTimeoutMs,
    0,
    OFF_OR_MS,
  );
  const queryTimeoutMs = c.int('queryTimeoutMs', top.queryTimeoutMs, DEFAULTS.queryTimeoutMs, 0, OFF_OR_MS);

  const upRaw = top.upstream === undefined ? {} : c.object('upstream', top.upstream) ?? {};
  c.known('upstream', upRaw, UPSTREAM_FIELDS);
  const d = DEFAULTS.upstream;
  const upstream: UpstreamConfig = {
    host: c.string('upstream.host', upRaw.host, d.host) ?? d.host,
    port: c.int('upstream.port', upRaw.port, d.port, 1, 'a port number (1-65535)'),
    maxConnections: c.int('upstream.maxConnections', upRaw.maxConnections, d.maxConnections, 1, POSITIVE),
    connectTimeoutMs: c.int('upstream.connectTimeoutMs', upRaw.connectTimeoutMs, d.connectTimeoutMs, 1, POSITIVE),
  };
  if (upstream.port > 65535) c.fail('upstream.port', 'must be a port number (1-65535)', upstream.port);

  const services: ServiceConfig[] = [];
  if (!Array.isArray(top.services) || top.services.length === 0) {
    c.fail('services', 'must be a non-empty list', top.services);
  } else {
    const names = new Set<string>();
    top.services.forEach((sv: unknown, i: number) => {
      const path = `services[${i}]`;
      const o = c.object(path, sv);
      if (!o) return;
      c.known(path, o, SERVICE_FIELDS);
      const name = c.string(`${path}.name`, o.name) ?? `#${i}`;
      if (names.has(name)) c.fail(`${path}.name`, 'must be unique', name);
      names.add(name);
      const matchRaw = o.match === undefined ? {} : c.object(`${path}.match`, o.match) ?? {};
      c.known(`${path}.match`, matchRaw, MATCH_FIELDS);
      const match: ServiceMatch = {};
      for (const k of MATCH_FIELDS) {
        if (matchRaw[k] !== undefined) match[k] = c.string(`${path}.match.${k}`, matchRaw[k]);
      }
      const queueRaw = o.queue === undefined ? {} : c.object(`${path}.queue`, o.queue) ?? {};
      c.known(`${path}.queue`, queueRaw, QUEUE_FIELDS);
      const dq = DEFAULTS.service.queue;
      const svc: ServiceConfig = {
        name,
        match,
        budget: c.int(`${path}.budget`, o.budget, undefined, 1, POSITIVE),
        poolMode: c.oneOf(`${path}.poolMode`, o.poolMode, POOL_MODES, DEFAULTS.service.poolMode),
        onSessionState: c.oneOf(`${path}.onSessionState`, o.onSessionState, ON_SESSION_STATE, DEFAULTS.service.onSessionState),
        queue: {
          maxWaiting: c.int(`${path}.queue.maxWaiting`, queueRaw.maxWaiting, dq.maxWaiting, 0, NON_NEGATIVE),
          timeoutMs: c.int(`${path}.queue.timeoutMs`, queueRaw.timeoutMs, dq.timeoutMs, 1, POSITIVE),
        },
        idleInTransactionTimeoutMs: c.int(
          `${path}.idleInTransactionTimeoutMs`,
          o.idleInTransactionTimeoutMs,
          idleInTransactionTimeoutMs,
          0,
          OFF_OR_MS,
        ),
        queryTimeoutMs: c.int(`${path}.queryTimeoutMs`, o.queryTimeoutMs, queryTimeoutMs, 0, OFF_OR_MS),
      };
      if (o.password !== undefined) svc.password = c.string(`${path}.password`, o.password);
      if (o.passwordEnv !== undefined) svc.passwordEnv = c.string(`${path}.passwordEnv`, o.passwordEnv);
      if (svc.password !== undefined && svc.passwordEnv !== undefined) {
        c.fail(`${path}.passwordEnv`, 'cannot be set together with password');
      }
      services.push(svc);
    });
  }

  const defaultService =
    top.defaultService === undefined ? undefined : c.string('defaultService', top.defaultService);
  if (defaultService !== undefined && !services.some((s) => s.name === defaultService)) {
    c.fail('defaultService', 'must name one of services[].name', defaultService);
  }

  const config: Config = {
    listen: c.hostPort('listen', top.listen, DEFAULTS.listen),
    admin: c.hostPort('admin', top.admin, DEFAULTS.admin),
    logLevel: c.oneOf('logLevel', top.logLevel, LOG_LEVELS, DEFAULTS.logLevel),
    startupTimeoutMs: c.int('startupTimeoutMs', top.startupTimeoutMs, DEFAULTS.startupTimeoutMs, 1, POSITIVE),
    shutdownTimeoutMs: c.int('shutdownTimeoutMs', top.shutdownTimeoutMs, DEFAULTS.shutdownTimeoutMs, 0, NON_NEGATIVE),
    serverIdleTimeoutMs: c.int(
      'serverIdleTimeoutMs',
      top.serverIdleTimeoutMs,
      DEFAULTS.serverIdleTimeoutMs,
      1,
      POSITIVE,
    ),
    serverLifetimeMs: c.int('serverLifetimeMs', top.serverLifetimeMs, DEFAULTS.serverLifetimeMs, 1, POSITIVE),
    maxMessageBytes: c.int('maxMessageBytes', top.maxMessageBytes, DEFAULTS.maxMessageBytes, 1024, 'an integer >= 1024'),
    maxPreparedStatements: c.int(
      'maxPreparedStatements',
      top.maxPreparedStatements,
      DEFAULTS.maxPreparedStatements,
      1,
      POSITIVE,
    ),
    tcpKeepaliveMs: c.int('tcpKeepaliveMs', top.tcpKeepaliveMs, DEFAULTS.tcpKeepaliveMs, 0, OFF_OR_MS),
    clientIdleTimeoutMs: c.int('clientIdleTimeoutMs', top.clientIdleTimeoutMs, DEFAULTS.clientIdleTimeoutMs, 0, OFF_OR_MS),
    idleInTransactionTimeoutMs,
    queryTimeoutMs,
    upstream,
    services,
  };
  if (defaultService !== undefined) config.defaultService = defaultService;
  if (c.problems.length > 0) throw new ConfigError(c.problems);
  return config;
}

/** Budgets that add up to more than the cap are allowed (the cap still holds); say so. */
export function overcommitWarning(config: Config): string | null {
  const sum = config.services.reduce((n, s) => n + s.budget, 0);
  if (sum <= config.upstream.maxConnections) return null;
  return (
    `service budgets add up to ${sum}, more than upstream.maxConnections ${config.upstream.maxConnections}: ` +
    `the cap still holds; freed capacity is shared round-robin among waiting services`
  );
}
