// Every error the proxy itself can send a client, declared once with its
// SQLSTATE. Errors that come from PostgreSQL are forwarded unchanged and are
// not listed here.
import type { ErrorFields } from './protocol/encode.js';

export interface WaitFacts {
  service: string;
  budget: number;
  inUse: number;
  waiting: number;
}

export const clientErrors = {
  /** 08P01 protocol_violation: malformed, oversized or out-of-place packets. */
  protocolViolation: (what: string): ErrorFields => ({
    severity: 'FATAL',
    code: '08P01',
    message: `pgbudget: protocol violation: ${what}`,
  }),

  /**
   * XX000 internal_error: a bug in pgbudget while serving this client. Only
   * this client is ended; the details go to the log, never to the client.
   */
  internalError: (): ErrorFields => ({
    severity: 'FATAL',
    code: 'XX000',
    message: 'pgbudget: internal error',
  }),

  /**
   * 28P01 invalid_password: a wrong or missing password, or a user the
   * proxy knows no password of; worded as PostgreSQL's, which does not say which.
   */
  passwordFailed: (user: string): ErrorFields => ({
    severity: 'FATAL',
    code: '28P01',
    message: `password authentication failed for user "${user}"`,
    file: 'auth.c',
    routine: 'auth_failed',
  }),

  /** 08P01: a SCRAM message that does not parse, with PostgreSQL's wording. */
  malformedScram: (detail: string): ErrorFields => ({
    severity: 'FATAL',
    code: '08P01',
    message: 'malformed SCRAM message',
    detail,
  }),

  /** 08P01: a SASL mechanism the proxy did not offer. */
  invalidSaslMechanism: (): ErrorFields => ({
    severity: 'FATAL',
    code: '08P01',
    message: 'client selected an invalid SASL authentication mechanism',
  }),

  /** 08P01: another message where the answer to an authentication request belongs. */
  expectedAuthResponse: (what: 'SASL' | 'password', type: number): ErrorFields => ({
    severity: 'FATAL',
    code: '08P01',
    message: `expected ${what} response, got message type ${type}`,
  }),

  /** 08P01: the client did not finish authenticating in time (authTimeoutMs). */
  authTimeout: (ms: number): ErrorFields => ({
    severity: 'FATAL',
    code: '08P01',
    message: `pgbudget: authentication not completed within ${ms} ms`,
  }),

  /** 28000: the cert method, and no verified client certificate whose CN is the user (PostgreSQL's words). */
  certFailed: (user: string): ErrorFields => ({
    severity: 'FATAL',
    code: '28000',
    message: `certificate authentication failed for user "${user}"`,
  }),

  /** 28000: tls.mode verify-client, and the client's certificate does not chain to tls.ca. */
  clientCertificateRejected: (reason: string): ErrorFields => ({
    severity: 'FATAL',
    code: '28000',
    message: `pgbudget: client certificate rejected: ${reason}`,
  }),

  /** 28000: tls.mode require or verify-client, and the client did not start TLS. */
  tlsRequired: (): ErrorFields => ({
    severity: 'FATAL',
    code: '28000',
    message: 'pgbudget: TLS is required (connect with sslmode=require or stronger)',
  }),

  /** 08P01: the client did not finish the startup handshake in time. */
  startupTimeout: (ms: number): ErrorFields => ({
    severity: 'FATAL',
    code: '08P01',
    message: `pgbudget: startup not completed within ${ms} ms`,
  }),

  /** 28000 invalid_authorization_specification: no service takes this client. */
  noService: (user: string, database: string, applicationName: string): ErrorFields => ({
    severity: 'FATAL',
    code: '28000',
    message: `pgbudget: no service matches user=${user} database=${database} application_name=${applicationName}`,
  }),

  /** 53300 too_many_connections: maxClients reached, in PostgreSQL's words; the DETAIL names the limit. */
  tooManyClients: (limit: number, service: string | null): ErrorFields => ({
    severity: 'FATAL',
    code: '53300',
    message: 'sorry, too many clients already',
    detail: service === null ? `pgbudget: maxClients ${limit} reached` : `pgbudget: service "${service}" has its maxClients ${limit} clients`,
  }),

  /** 53300 too_many_connections: the service's wait queue is full. */
  queueFull: (f: WaitFacts, maxWaiting: number): ErrorFields => ({
    severity: 'FATAL',
    code: '53300',
    message:
      `pgbudget: service "${f.service}" wait queue is full (maxWaiting ${maxWaiting}; ` +
      `budget ${f.budget}, ${f.inUse} in use, ${f.waiting} waiting)`,
  }),

  /** 53300 too_many_connections: waited queue.timeoutMs without getting a server connection. */
  queueTimeout: (f: WaitFacts, waitedMs: number, upstreamCause?: string): ErrorFields => ({
    severity: 'FATAL',
    code: '53300',
    message:
      `pgbudget: service "${f.service}" waited ${waitedMs} ms for a server connection ` +
      `(budget ${f.budget}, ${f.inUse} in use, ${f.waiting} waiting)` +
      (upstreamCause ? `; upstream unavailable: ${upstreamCause}` : ''),
  }),

  /** 0A000 feature_not_supported: session state in transaction mode with onSessionState: error. */
  sessionStateRefused: (service: string, what: string): ErrorFields => ({
    severity: 'ERROR',
    code: '0A000',
    message: `pgbudget: ${what} keeps session state, which service "${service}" (transaction pooling) cannot carry between transactions`,
    hint: 'Use SET LOCAL (or pg_advisory_xact_lock, ON COMMIT DROP) inside a transaction, or poolMode: session, or onSessionState: pin.',
  }),

  /** 42501 insufficient_privilege: SQL that names the proxy's own prepared statements. */
  reservedStatementName: (prefix: string): ErrorFields => ({
    severity: 'ERROR',
    code: '42501',
    message: `pgbudget: prepared statement names starting with ${prefix} belong to the proxy`,
  }),

  /**
   * 0A000 feature_not_supported: a prepared statement whose result shape
   * changed since the client prepared it, in PostgreSQL's own words and with
   * its source location (postgres.js prepares again when routine says so).
   */
  cachedPlanChanged: (): ErrorFields => ({
    severity: 'ERROR',
    code: '0A000',
    message: 'cached plan must not change result type',
    file: 'plancache.c',
    routine: 'RevalidateCachedQuery',
  }),

  /** 57014 query_canceled: cancelled while still waiting for a server connection (PostgreSQL's own words). */
  queryCanceled: (): ErrorFields => ({
    severity: 'ERROR',
    code: '57014',
    message: 'canceling statement due to user request',
    detail: 'pgbudget: the statement was still waiting for a server connection and never ran',
  }),

  /** 57P05 idle_session_timeout: clientIdleTimeoutMs, in PostgreSQL's own words (idle_session_timeout). */
  idleSessionTimeout: (): ErrorFields => ({
    severity: 'FATAL',
    code: '57P05',
    message: 'terminating connection due to idle-session timeout',
  }),

  /** 25P03 idle_in_transaction_session_timeout: idleInTransactionTimeoutMs, in PostgreSQL's own words. */
  idleInTransactionTimeout: (): ErrorFields => ({
    severity: 'FATAL',
    code: '25P03',
    message: 'terminating connection due to idle-in-transaction timeout',
  }),

  /**
   * 57014 query_canceled: queryTimeoutMs. The server reports the cancel
   * pgbudget sent as "due to user request"; the client gets what
   * statement_timeout would have said.
   */
  statementTimeout: (): ErrorFields => ({
    severity: 'ERROR',
    code: '57014',
    message: 'canceling statement due to statement timeout',
  }),

  /** 57P01 admin_shutdown: the proxy is shutting down. */
  shuttingDown: (): ErrorFields => ({
    severity: 'FATAL',
    code: '57P01',
    message: 'pgbudget: terminating connection because the proxy is shutting down',
  }),

  /** 08006 connection_failure: the server connection went away under the client. */
  serverConnectionLost: (cause: string): ErrorFields => ({
    severity: 'FATAL',
    code: '08006',
    message: `pgbudget: server connection lost: ${cause}`,
  }),

  /** 08P01: the server sent something the proxy cannot follow; the connection is not reused. */
  serverProtocolViolation: (what: string): ErrorFields => ({
    severity: 'FATAL',
    code: '08P01',
    message: `pgbudget: server protocol violation: ${what}`,
  }),

  /** 28P01 invalid_password: the server demands a password the service config does not provide. */
  noServerPassword: (service: string, method: string): ErrorFields => ({
    severity: 'FATAL',
    code: '28P01',
    message: `pgbudget: server requested ${method} authentication but service "${service}" has no password or passwordEnv`,
  }),

  /** 28000: the server asked for an authentication method the proxy does not implement. */
  unsupportedServerAuth: (method: string): ErrorFields => ({
    severity: 'FATAL',
    code: '28000',
    message: `pgbudget: server requested unsupported authentication method ${method}`,
  }),

  /** 08006 connection_failure: auth.query could not be asked (the cause is in pgbudget's log, not here: it may name the lookup's internals). */
  passwordLookupFailed: (user: string): ErrorFields => ({
    severity: 'FATAL',
    code: '08006',
    message: `pgbudget: could not look up the password of user "${user}"`,
    hint: "The cause is in pgbudget's log (auth.query).",
  }),

  /** 08001 sqlclient_unable_to_establish_sqlconnection: upstream.tls.mode wants TLS and the server has none (libpq's words). */
  upstreamTlsUnavailable: (mode: string): ErrorFields => ({
    severity: 'FATAL',
    code: '08001',
    message: 'pgbudget: server does not support SSL, but SSL was required',
    detail: `upstream.tls.mode is "${mode}"`,
  }),

  /** 08001: the TLS handshake with the server failed (its certificate did not verify, most often). */
  upstreamTlsFailed: (reason: string): ErrorFields => ({
    severity: 'FATAL',
    code: '08001',
    message: `pgbudget: TLS to the server failed: ${reason}`,
  }),
} as const;

export type ClientErrorName = keyof typeof clientErrors;
