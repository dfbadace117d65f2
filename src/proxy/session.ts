// One client session: its entry points from the event loop, the client's
// bytes read and checked, its timeouts, and its ending. Its way in is its
// Admission (admission.ts); what touches a server connection (waiting for
// one, forwarding, cancel, giving it back) is its ServerLink (link.ts).
import { randomInt } from 'node:crypto';
import type { Logger } from 'pino';
import { countClientError, UNMATCHED, type RejectReason, type ServiceStats, type Stats } from '../budget/stats.js';
import type { ServiceConfig } from '../types/config.js';
import { clientErrors } from '../errors.js';
import { ALPN_POSTGRESQL, Backend } from '../protocol/codes.js';
import { errorResponse, type ErrorFields } from '../protocol/encode.js';
import { clientTransport, type Accepted } from '../io/accept.js';
import type { Transport } from '../io/transport.js';
import { startTls, type PeerCertificate, type TlsUpgradeHandler } from '../io/tls.js';
import type { ClientTls } from './clientTls.js';
import type { RejectedBecause } from '../server/pool.js';
import type { SessionRegistry } from '../client/registry.js';
import type { SessionStateReason } from '../client/sessionState.js';
import { StatementLayer, type OwnErrors } from '../client/statementLayer.js';
import { ClientInbound } from '../client/inbound.js';
import { ClientOutbound } from '../client/outbound.js';
import { TransactionTracker, type SessionTimeouts } from '../client/transaction.js';
import { welcome } from '../client/welcome.js';
import { Admission, type AdmissionContext, type AdmissionOwner, type Identity, type LoginKeys } from './admission.js';
import { ServerLink, type LinkContext, type LinkOwner, type LinkState } from './link.js';
import { userTimeoutMs } from '../io/userTimeout.js';

export interface SessionContext extends LinkContext, AdmissionContext {
  readonly stats: Stats;
  readonly log: Logger;
  /** The live sessions, by the BackendKeyData process id we gave them (cancel requests, shutdown). */
  readonly sessions: SessionRegistry<ClientSession>;
  /** The timeouts that apply to a service's clients now (a reload changes them for clients already connected). */
  timeouts(service: string): SessionTimeouts;
}

export type { SessionTimeouts };

type State = 'startup' | 'open' | 'closed';

export class ClientSession implements TlsUpgradeHandler, AdmissionOwner, LinkOwner, OwnErrors {
  state: State = 'startup';
  service: ServiceConfig | null = null;
  user = '';
  database = '';
  applicationName = '';
  /** This session's own id: its slot in the registry, and its BackendKeyData in transaction mode. */
  readonly processId: number;
  readonly secretKey: number;
  /**
   * Session mode: the real process id of the server connection bound at
   * login, which the client's BackendKeyData carries (so pg_backend_pid()
   * and notification pids match it); 0 until then, and in transaction mode.
   */
  private serverPid = 0;
  /** A replication connection: bound at login, passed through, closed with the client (counted in replicationConnections once bound: serverPid set). */
  private replication = false;
  private serviceStats: ServiceStats | null = null;
  private readonly connectedAt = Date.now();
  private closeReason = 'client disconnected';
  /** An error boundary caught a failure here already (it is logged once). */
  private hasFailed = false;
  /** Out of the registry and the counters (forget()). */
  private forgotten = false;

  /** Protocol position, from the message types of both directions. */
  readonly tx = new TransactionTracker();
  /** Statement checks and rewriting, between the client's messages and the server (transaction mode). */
  readonly statementLayer = new StatementLayer(this);
  /** The client's bytes on their way in: framed, tracked, checked. */
  readonly inbound: ClientInbound;
  /** Server bytes on their way to the client: tracked, the answers to the proxy's own requests left out. */
  readonly outbound: ClientOutbound;
  /** The client's connection: plain, or TLS once an SSLRequest was answered 'S' (or the client started TLS directly). */
  socket: Transport;
  /** The way in: handshake, deadline, service. */
  private readonly admission: Admission;
  /** The server side: waiting, forwarding, cancel, giving back. */
  private readonly link: ServerLink;

  constructor(
    accepted: Accepted,
    private readonly ctx: SessionContext,
  ) {
    this.processId = ctx.sessions.nextProcessId(randomInt(0, 1024));
    this.secretKey = randomInt(0, 0x7fffffff);
    const cfg = ctx.config();
    this.inbound = new ClientInbound(this.tx, this.statementLayer, cfg.maxMessageBytes);
    this.outbound = new ClientOutbound(this.tx, this.statementLayer, this);
    this.socket = clientTransport(accepted, this, { keepAliveMs: cfg.tcpKeepaliveMs, userTimeoutMs: userTimeoutMs(cfg) });
    this.admission = new Admission(ctx, this, this.socket, this.connectedAt, cfg.startupTimeoutMs);
    this.link = new ServerLink(ctx, this, this);
    // Registered once nothing here can fail: a session that could not start is never listed.
    ctx.sessions.add(this);
    this.tx.heard(this.connectedAt);
  }

  // ---- entry points ----
  //
  // Every call the event loop makes into this session, for this client's
  // bytes, a sweep or a shutdown, enters through one of these (the server
  // side's through the link's). Each is an error boundary: what fails
  // inside ends this client and nobody else (see failed()).

  onData(chunk: Buffer): void {
    try {
      this.clientData(chunk);
    } catch (err) {
      this.failed(err, 'client read');
    }
  }

  onDrain(): void {
    try {
      this.link.clientDrained();
    } catch (err) {
      this.failed(err, 'client drain');
    }
  }

  onError(message: string): void {
    this.closeReason = `client socket error: ${message}`;
  }

  onClose(): void {
    try {
      this.detach();
    } catch (err) {
      this.failed(err, 'client close');
    }
  }

  /**
   * Called by the proxy's periodic sweep for every session (not a timer per
   * client: arming and clearing one cost more than the rest of the accept
   * path together): the startup deadline, the idle timeouts, the query timeout.
   */
  checkTimeouts(now: number): void {
    if (this.state === 'closed') return;
    try {
      this.timeouts(now);
    } catch (err) {
      this.failed(err, 'timeout sweep');
    }
  }

  /**
   * A CancelRequest (from another connection) named this session; `done`
   * runs once the cancel has reached the server, or is not going to.
   */
  cancelRequested(secretKey: number, done: () => void): void {
    try {
      if (secretKey !== this.secretKey || this.state !== 'open') return done();
      this.link.cancels.request(done);
    } catch (err) {
      done();
      this.failed(err, 'cancel request');
    }
  }

  /** Shutdown: leave now if between transactions, else when the transaction ends. */
  shutdown(): void {
    try {
      // Linked inside a transaction: the link ends it at the boundary (endForShutdown).
      if (this.link.state === 'linked' && !this.link.atBoundary) return;
      if (this.state !== 'closed') this.endForShutdown();
    } catch (err) {
      this.failed(err, 'shutdown');
    }
  }

  /** Last resort at the end of the shutdown grace period. */
  forceClose(): void {
    this.closeReason = 'shutdown timeout';
    this.destroySocket();
  }

  /** AdmissionOwner: the client is gone or being ended. */
  get ended(): boolean {
    return this.state === 'closed';
  }

  /**
   * The error boundary's answer (LinkOwner too): a bug (or anything
   * unexpected) while serving this client ends this client with XX000,
   * logged once with its stack. Its server connection is closed, never
   * reused (its state is unknown), and the budget slot comes back.
   * Malformed input never gets here: it is found by checks that return
   * errors (protocolViolation).
   */
  failed(err: unknown, where: string): void {
    this.tx.poisoned = true;
    const first = !this.hasFailed;
    this.hasFailed = true;
    let ended = false;
    try {
      if (first) {
        this.ctx.log.error({ err, service: this.serviceName, pid: this.processId, where }, 'pgbudget: internal error; client closed');
      }
      this.stats().rejections.internal_error++;
      this.fatal(clientErrors.internalError(), `internal error in ${where}`);
      ended = true;
    } catch {
      // The ending itself failed: fall through to the last resort.
    }
    this.abandon(ended);
  }

  /** After a failure: the link gives back what it holds, unclean; then the socket and the counters, each on its own. */
  private abandon(ended: boolean): void {
    const wasState = this.reportedState;
    this.link.abandon();
    if (!ended) this.destroySocket();
    this.state = 'closed';
    try {
      this.forget(wasState);
    } catch {
      // Counters and a log line only.
    }
  }

  private destroySocket(): void {
    try {
      this.socket.destroy();
    } catch {
      // Already gone.
    }
  }

  private timeouts(now: number): void {
    if (this.state === 'startup') return this.admission.checkDeadline(now);
    const linkState = this.link.state;
    // A replication stream is one long COPY: no statement or idle timeout applies to it.
    if (this.service === null || linkState === 'waiting' || this.replication) return;
    const due = this.tx.due(this.ctx.timeouts(this.service.name), now, linkState === 'linked');
    if (due === 'query_timeout') this.link.cancels.forTimeout();
    else if (due !== null) this.idleTimedOut(due);
  }

  /**
   * FATAL as PostgreSQL's own idle_session_timeout or
   * idle_in_transaction_session_timeout ends a session. Inside a
   * transaction the server connection is closed, never reused, so the
   * server rolls the transaction back; its slot comes back when it has closed.
   */
  private idleTimedOut(reason: 'client_idle_timeout' | 'idle_in_transaction_timeout'): void {
    this.stats().rejections[reason]++;
    const fields = reason === 'client_idle_timeout' ? clientErrors.idleSessionTimeout() : clientErrors.idleInTransactionTimeout();
    this.fatal(fields, reason === 'client_idle_timeout' ? 'idle-session timeout' : 'idle-in-transaction timeout');
  }

  get serviceName(): string {
    return this.service?.name ?? UNMATCHED;
  }

  // ---- what the admission decides (AdmissionOwner) ----

  /** A malformed packet from the client: 08P01, and the server connection (if any) is not reused. */
  protocolViolation(what: string): void {
    this.tx.poisoned = true;
    this.stats().rejections.protocol_violation++;
    this.fatal(clientErrors.protocolViolation(what), `protocol violation: ${what}`);
  }

  /** 57P01 to a client the shutdown does not wait for (LinkOwner: at the end of its transaction). */
  endForShutdown(): void {
    this.stats().rejections.shutdown++;
    this.fatal(clientErrors.shuttingDown(), 'shutting down');
  }

  admitted(who: Identity, configured: ServiceConfig, login: LoginKeys, rest: Buffer): void {
    // A replication client holds its own server connection for the whole
    // session, whatever its service's mode: session mode, passed through.
    const service = who.replication ? asReplication(configured) : configured;
    this.replication = who.replication;
    this.user = who.user;
    this.database = who.database;
    this.applicationName = who.applicationName;
    this.service = service;
    this.state = 'open';
    this.link.open(service, login, who.replication);
    if (service.poolMode === 'transaction') {
      this.inbound.readWhole();
      this.outbound.trimAll();
    }
    this.stats().clientsConnected++;
    // Guarded: the argument object would be built even when info is off.
    if (this.ctx.log.isLevelEnabled('info')) {
      this.ctx.log.info(
        { service: service.name, user: this.user, database: this.database, applicationName: this.applicationName, pid: this.processId },
        'client connected',
      );
    }
    // Session mode binds a server connection at login: the client's welcome is
    // that server's own, its process id included. In transaction mode the
    // first client of a pool key waits for a real login to learn the
    // server's parameters; the others get them at once.
    const known = service.poolMode === 'transaction' ? this.ctx.pool.welcome(login.welcomeKey) : undefined;
    if (known) this.welcome(known, 0);
    else this.link.requestLogin();
    // The welcome or the login may have ended the session already (TS narrows state to 'open' here).
    if (rest.length > 0 && (this.state as State) !== 'closed') this.clientData(rest);
  }

  /**
   * AdmissionOwner: the client's connection becomes a TLS one; reads go on
   * through it. ALPN "postgresql" is chosen when offered; a client that
   * offers only other protocols fails the handshake (as PostgreSQL 17).
   */
  startTls(tls: ClientTls, hello: Buffer | null): void {
    const secure = startTls(
      this.socket,
      { isServer: true, secureContext: tls.context, requestCert: tls.verifyClient, rejectUnauthorized: tls.verifyClient, ALPNProtocols: ALPN },
      this,
      hello,
    );
    this.socket = secure;
    this.admission.socket = secure;
    this.link.clientUpgraded(secure);
  }

  /** TlsUpgradeHandler: the TLS handshake is done; the client's startup packet comes next. */
  onSecure(peer: PeerCertificate, alpn: string | null): void {
    try {
      this.admission.secured(peer, alpn);
    } catch (err) {
      this.failed(err, 'tls handshake');
    }
  }

  refused(rejection: RejectReason, fields: ErrorFields, reason: string, service?: string): void {
    const st = service === undefined ? this.stats() : this.ctx.stats.service(service);
    st.rejections[rejection]++;
    this.fatal(fields, reason, st);
  }

  dropped(rejection: RejectReason, reason: string): void {
    this.stats().rejections[rejection]++;
    this.closeReason = reason;
    this.endWith(EMPTY);
  }

  leave(reason: string, graceful: boolean): void {
    this.closeReason = reason;
    if (graceful) this.socket.close();
    else this.destroySocket();
  }

  /**
   * LinkOwner too: the welcome, with the server's parameters (the pool
   * key's, or in session mode those of the server connection bound at
   * login, whose process id `serverPid` the client is given).
   */
  welcome(params: [string, string][], serverPid: number): void {
    if (this.service?.poolMode === 'session' && serverPid !== 0) {
      this.serverPid = serverPid;
      this.ctx.sessions.bindServerPid(serverPid, this);
      if (this.replication) this.stats().replicationConnections++;
    }
    this.socket.write(welcome(params, this.applicationName, this.serverPid || this.processId, this.secretKey));
  }

  // ---- client → server ----

  private clientData(chunk: Buffer): void {
    if (this.state === 'startup') return this.admission.read(chunk);
    if (this.state === 'closed') return;
    this.tx.heard(Date.now());
    const inbound = this.inbound;
    if (inbound.whole) {
      const service = this.service!;
      const messages = inbound.readMessages(chunk, service.name, service.onSessionState);
      if (typeof messages === 'string') return this.protocolViolation(messages);
      if (inbound.pinReason !== null) this.pin(inbound.pinReason);
      if (inbound.resetsSettings) {
        inbound.resetsSettings = false;
        this.link.settingsMayReset();
      }
      if (messages.length > 0) this.link.sendMessages(messages);
    } else {
      const data = inbound.readBytes(chunk);
      if (typeof data === 'string') return this.protocolViolation(data);
      if (data.length > 0) this.link.sendBytes(data);
    }
    if (inbound.terminated) {
      this.closeReason = 'client terminated';
      this.socket.close();
    }
  }

  /** Session state in transaction mode (onSessionState: pin): the client keeps its server connection. */
  private pin(reason: SessionStateReason): void {
    if (!this.tx.pin(reason)) return;
    const pins = this.stats().pins;
    pins[reason] = (pins[reason] ?? 0) + 1;
    this.ctx.log.info({ service: this.serviceName, pid: this.processId, reason }, 'client pinned to its server connection');
  }

  // ---- what the link reports (LinkOwner) ----

  rejected(error: Buffer, reason: RejectedBecause, sqlstate: string | null): void {
    const st = this.stats();
    st.rejections[reason]++;
    if (sqlstate !== null && this.state !== 'closed') countClientError(st, sqlstate);
    this.closeReason = reason;
    this.endWith(error);
  }

  serverLost(cause: string): void {
    // If the server's last word was an ErrorResponse, the client has the reason already.
    const reason = `server connection closed: ${cause}`;
    if (this.outbound.lastType === Backend.ErrorResponse) {
      this.closeReason = reason;
      this.endWith(EMPTY);
    } else {
      this.fatal(clientErrors.serverConnectionLost(cause), reason);
    }
  }

  serverViolation(message: string): void {
    this.fatal(clientErrors.serverProtocolViolation(message), 'server protocol violation');
  }

  /** This session's service counters; looked up once the service is known. */
  stats(): ServiceStats {
    if (this.serviceStats) return this.serviceStats;
    const st = this.ctx.stats.service(this.serviceName);
    if (this.service) this.serviceStats = st;
    return st;
  }

  /** OwnErrors: an error of the proxy's own went into the stream to the client (a refused statement, a reworded timeout). */
  ownError(sqlstate: string): void {
    countClientError(this.stats(), sqlstate);
  }

  // ---- ending ----

  /** Every FATAL of the proxy's own ends a client here: counted under `st` (the service, once known) by its SQLSTATE. */
  private fatal(fields: ErrorFields, reason: string, st: ServiceStats = this.stats()): void {
    if (this.state === 'closed') return;
    countClientError(st, fields.code);
    this.closeReason = reason;
    this.endWith(errorResponse(fields));
  }

  private endWith(message: Buffer): void {
    if (this.state === 'closed') return;
    this.socket.end(message);
    this.socket.resume();
    this.detach();
    // A client that does not close its side is not waited for.
    setTimeout(() => this.destroySocket(), 1000).unref();
  }

  /** Gives back whatever the session holds; idempotent. */
  private detach(): void {
    if (this.state === 'closed') return;
    const wasState = this.reportedState;
    this.state = 'closed';
    try {
      this.link.close();
    } finally {
      this.forget(wasState);
    }
  }

  /** The state a disconnect is logged with: where the client was. */
  private get reportedState(): 'startup' | LinkState {
    return this.state === 'startup' ? 'startup' : this.link.state;
  }

  /** The session leaves the counters and the registry; once. */
  private forget(wasState: string): void {
    if (this.forgotten) return;
    this.forgotten = true;
    this.ctx.sessions.delete(this);
    if (this.serverPid !== 0) {
      this.ctx.sessions.unbindServerPid(this.serverPid, this);
      if (this.replication) this.stats().replicationConnections--;
    }
    if (!this.service) return;
    this.stats().clientsConnected--;
    if (this.ctx.log.isLevelEnabled('info')) {
      this.ctx.log.info(
        { service: this.service.name, pid: this.processId, durationMs: Date.now() - this.connectedAt, reason: this.closeReason, state: wasState },
        'client disconnected',
      );
    }
  }
}

const EMPTY = Buffer.alloc(0);
const ALPN = [ALPN_POSTGRESQL];

/** A replication client's view of its service: session mode, whatever the service's own (one view per service config). */
const replicationViews = new WeakMap<ServiceConfig, ServiceConfig>();

function asReplication(service: ServiceConfig): ServiceConfig {
  let view = replicationViews.get(service);
  if (view === undefined) replicationViews.set(service, (view = { ...service, poolMode: 'session' }));
  return view;
}
