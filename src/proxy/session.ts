// One client session: the startup handshake, finding its service, waiting
// for a server connection, forwarding in both directions with backpressure,
// and giving the server connection back at the right moment (end of
// transaction in transaction mode, end of session in session mode).
import { randomInt } from 'node:crypto';
import type { Logger } from 'pino';
import type { Waiter } from '../budget/scheduler.js';
import { UNMATCHED, type ServiceStats, type Stats } from '../budget/stats.js';
import type { Config, ServiceConfig } from '../types/config.js';
import { matchService } from '../client/match.js';
import { clientErrors } from '../errors.js';
import { Backend } from '../protocol/codes.js';
import { errorResponse, readyForQuery, type ErrorFields } from '../protocol/encode.js';
import { clientTransport, type Accepted } from '../io/accept.js';
import type { Transport, TransportHandler } from '../io/transport.js';
import { FrameError } from '../protocol/framing.js';
import type { ServerConnection, ServerOwner } from '../server/connection.js';
import type { RejectedBecause, ServerPool, WaitHandlers } from '../server/pool.js';
import { poolKey } from '../server/poolKey.js';
import { readHandshake, type HandshakeListener } from '../client/handshake.js';
import type { SessionRegistry } from '../client/registry.js';
import { ServerStatements } from '../client/serverStatements.js';
import type { SessionStateReason } from '../client/sessionState.js';
import { StatementLayer } from '../client/statementLayer.js';
import { ClientInbound } from '../client/inbound.js';
import { ClientOutbound } from '../client/outbound.js';
import { TransactionTracker, type SessionTimeouts } from '../client/transaction.js';
import { welcome } from '../client/welcome.js';

export interface SessionContext {
  config(): Config;
  readonly pool: ServerPool;
  readonly stats: Stats;
  readonly log: Logger;
  /** The live sessions, by the BackendKeyData process id we gave them (cancel requests, shutdown). */
  readonly sessions: SessionRegistry<ClientSession>;
  readonly shuttingDown: boolean;
  /** The timeouts that apply to a service's clients now (a reload changes them for clients already connected). */
  timeouts(service: string): SessionTimeouts;
}

export type { SessionTimeouts };

type State = 'startup' | 'idle' | 'waiting' | 'linked' | 'closed';

export class ClientSession implements ServerOwner, WaitHandlers, TransportHandler, HandshakeListener {
  state: State = 'startup';
  service: ServiceConfig | null = null;
  user = '';
  database = '';
  applicationName = '';
  readonly processId: number;
  readonly secretKey: number;
  private key = '';
  private server: ServerConnection | null = null;
  private waiter: Waiter | null = null;
  /** The server connection being waited for is the first login for this pool key: the client gets its welcome from it. */
  private loginPending = false;
  private serviceStats: ServiceStats | null = null;
  private startupBuf: Buffer | null = EMPTY;
  /** When startup must be complete (ms since the epoch); 0 once it is, or the session is closed. */
  private startupDeadline: number;
  private readonly startupTimeoutMs: number;
  /** Client bytes that arrived while no server connection was linked. */
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private readonly connectedAt = Date.now();
  private closeReason = 'client disconnected';
  /** An error boundary caught a failure here already (it is logged once). */
  private hasFailed = false;
  /** A server connection being handed over (onAssign), until it is linked or given back. */
  private assigning: ServerConnection | null = null;
  /** Out of the registry and the counters (forget()). */
  private forgotten = false;
  /** This connection carried a CancelRequest: it closes once the cancel has been passed on. */
  private cancelling = false;

  /** Protocol position, from the message types of both directions. */
  private readonly tx = new TransactionTracker();

  /** Statement checks and rewriting, between the client's messages and the server (transaction mode). */
  private readonly statementLayer = new StatementLayer();
  /** The client's bytes on their way in: framed, tracked, checked. */
  private readonly inbound: ClientInbound;
  /** Server bytes on their way to the client: tracked, the answers to the proxy's own requests left out. */
  private readonly outbound: ClientOutbound;

  private readonly socket: Transport;

  constructor(
    accepted: Accepted,
    private readonly ctx: SessionContext,
  ) {
    this.processId = ctx.sessions.nextProcessId(randomInt(0, 1024));
    this.secretKey = randomInt(0, 0x7fffffff);
    const cfg = ctx.config();
    this.inbound = new ClientInbound(this.tx, this.statementLayer, cfg.maxMessageBytes);
    this.outbound = new ClientOutbound(this.tx, this.statementLayer);
    this.socket = clientTransport(accepted, this, { keepAliveMs: cfg.tcpKeepaliveMs });
    // Registered once nothing here can fail: a session that could not start is never listed.
    ctx.sessions.add(this);
    this.startupTimeoutMs = cfg.startupTimeoutMs;
    this.startupDeadline = this.connectedAt + cfg.startupTimeoutMs;
    this.tx.heard(this.connectedAt);
  }

  // ---- entry points ----
  //
  // Every call the event loop makes into this session, for this client's
  // bytes, its server connection's bytes, a pool hand-out, a sweep or a
  // shutdown, enters through one of these. Each is an error boundary: what
  // fails inside ends this client and nobody else (see failed()).

  onData(chunk: Buffer): void {
    try {
      this.clientData(chunk);
    } catch (err) {
      this.failed(err, 'client read');
    }
  }

  onDrain(): void {
    try {
      this.server?.resume();
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

  onServerData(chunk: Buffer): void {
    try {
      this.serverData(chunk);
    } catch (err) {
      this.failed(err, 'server read');
    }
  }

  onServerDrain(): void {
    try {
      this.socket.resume();
    } catch (err) {
      this.failed(err, 'server drain');
    }
  }

  onServerClose(cause: string): void {
    try {
      this.serverClosed(cause);
    } catch (err) {
      this.failed(err, 'server close');
    }
  }

  /** WaitHandlers: a server connection for this client, at once or after waiting. */
  onAssign(conn: ServerConnection): void {
    this.assigning = conn;
    try {
      this.assigned(conn);
    } catch (err) {
      // Neither linked nor given back yet: it is this client's to give back.
      if (this.assigning === conn && this.server === null) this.server = conn;
      this.failed(err, 'server hand-out');
    }
    this.assigning = null;
  }

  /** WaitHandlers: no server connection for this client (queue full or timed out, login refused). */
  onReject(error: Buffer, reason: RejectedBecause): void {
    try {
      this.rejected(error, reason);
    } catch (err) {
      this.failed(err, 'queue rejection');
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
      this.cancelOwn(secretKey, done);
    } catch (err) {
      done();
      this.failed(err, 'cancel request');
    }
  }

  /** Shutdown: leave now if between transactions, else when the transaction ends. */
  shutdown(): void {
    try {
      // Linked inside a transaction: serverData ends it at the boundary.
      if (this.state === 'linked' && !this.atTransactionBoundary) return;
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

  /**
   * The error boundary's answer: a bug (or anything unexpected) while
   * serving this client ends this client with XX000, logged once with its
   * stack. Its server connection is closed, never reused (its state is
   * unknown), and the budget slot comes back. Malformed input never gets
   * here: it is found by checks that return errors (protocolViolation).
   */
  private failed(err: unknown, where: string): void {
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

  /**
   * After a failure: whatever the session still holds goes back, unclean,
   * each step on its own, so that one more failure cannot keep a slot. A
   * server connection that cannot even be released is destroyed: the pool
   * frees the slot of every server socket that closes.
   */
  private abandon(ended: boolean): void {
    const conn = this.server;
    this.server = null;
    if (conn) {
      try {
        conn.owner = null;
        this.ctx.pool.release(conn, false);
      } catch {
        conn.destroy('internal error');
      }
    }
    const waiter = this.waiter;
    this.waiter = null;
    if (waiter) {
      try {
        this.ctx.pool.cancelWait(waiter);
      } catch {
        // The sweep's queue timeout removes it.
      }
    }
    if (!ended) this.destroySocket();
    const wasState = this.state;
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
    if (this.startupDeadline !== 0) {
      if (now >= this.startupDeadline) this.startupTimedOut();
      return;
    }
    if (this.service === null || this.state === 'waiting') return;
    const due = this.tx.due(this.ctx.timeouts(this.service.name), now, this.state === 'linked');
    if (due === 'query_timeout') this.cancelForTimeout();
    else if (due !== null) this.idleTimedOut(due);
  }

  private startupTimedOut(): void {
    this.startupDeadline = 0;
    this.stats().rejections.startup_timeout++;
    this.fatal(clientErrors.startupTimeout(this.startupTimeoutMs), 'startup timeout');
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

  /**
   * queryTimeoutMs: the running statement is cancelled with the server's
   * cancel key, as the client's own cancel would be; the 57014 that comes
   * back is reworded as statement_timeout's (see onReply).
   */
  private cancelForTimeout(): void {
    const conn = this.server;
    if (!conn) return;
    this.tx.timedOut = true;
    // The reworded error must be seen whole, in session mode too.
    this.outbound.trimAll();
    const statement = this.tx.statementSince;
    this.stats().queryTimeouts++;
    this.ctx.pool.cancelQuery(conn, () => this.server === conn && this.tx.statementSince === statement && this.tx.expectedReady > 0, NOTHING);
  }

  get serviceName(): string {
    return this.service?.name ?? UNMATCHED;
  }

  /** Between transactions, with no server work outstanding. */
  get atTransactionBoundary(): boolean {
    return (
      this.tx.quiet &&
      this.inbound.atBoundary &&
      this.outbound.atBoundary &&
      this.statementLayer.held === null
    );
  }

  // ---- startup ----

  private onStartupData(chunk: Buffer): void {
    this.startupBuf = readHandshake(this.startupBuf!, chunk, this);
  }

  /** HandshakeListener: bytes the handshake answers with. */
  answer(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  /** HandshakeListener: the startup packet; anything pipelined after it is ordinary traffic. */
  startup(params: Readonly<Record<string, string>>, rest: Buffer): void {
    this.onStartupMessage(params);
    if (rest.length > 0 && this.state !== 'closed') this.clientData(rest);
  }

  /**
   * HandshakeListener: PostgreSQL closes a cancel connection once it has
   * signalled the backend, and libpq's PQcancel waits for that close: so
   * does the proxy, so a cancel that arrives late can never hit the
   * client's next statement. Bounded by the upstream cancel's own timeout.
   */
  cancel(processId: number, secretKey: number): void {
    this.clearStartupDeadline();
    this.cancelling = true;
    this.closeReason = 'cancel request';
    const target = this.ctx.sessions.get(processId);
    const close = () => this.destroySocket();
    if (target && target !== this) target.cancelRequested(secretKey, close);
    else close();
  }

  /** HandshakeListener: a Terminate before startup; PostgreSQL closes without a word here too. */
  goodbye(): void {
    this.closeReason = 'client terminated before startup';
    this.socket.close();
  }

  /** HandshakeListener: a malformed packet. */
  violation(what: string): void {
    this.protocolViolation(what);
  }

  /** A malformed packet from the client: 08P01, and the server connection (if any) is not reused. */
  private protocolViolation(what: string): void {
    this.tx.poisoned = true;
    this.stats().rejections.protocol_violation++;
    this.fatal(clientErrors.protocolViolation(what), `protocol violation: ${what}`);
  }

  /** 57P01 to a client the shutdown does not wait for. */
  private endForShutdown(): void {
    this.stats().rejections.shutdown++;
    this.fatal(clientErrors.shuttingDown(), 'shutting down');
  }

  private onStartupMessage(params: Readonly<Record<string, string>>): void {
    this.clearStartupDeadline();
    this.user = params.user;
    this.database = params.database || params.user;
    this.applicationName = params.application_name ?? '';
    const service = matchService(this.ctx.config(), {
      user: this.user,
      database: this.database,
      applicationName: this.applicationName,
    });
    if (!service) {
      this.stats().rejections.no_service++;
      return this.fatal(
        clientErrors.noService(this.user, this.database, this.applicationName),
        'no service matches',
      );
    }
    if (this.ctx.shuttingDown) {
      return this.endForShutdown();
    }
    this.service = service;
    // The same (shared, frozen) params object as the last login: the same key.
    if (params !== lastKeyParams) {
      lastKeyParams = params;
      lastKey = poolKey(this.user, this.database, params);
    }
    this.key = lastKey;
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
    const welcome = this.ctx.pool.welcome(this.key);
    if (welcome) {
      this.sendWelcome(welcome);
      this.state = 'idle';
      return;
    }
    // First client of this user and database: learn the server's parameters
    // from a real login, queued like any other request.
    this.requestServer(true);
  }

  private sendWelcome(params: [string, string][]): void {
    this.socket.write(welcome(params, this.applicationName, this.processId, this.secretKey));
  }

  // ---- client → server ----

  private clientData(chunk: Buffer): void {
    // Nothing may follow a CancelRequest: whatever does is ignored until the connection closes.
    if (this.state === 'startup') return this.cancelling ? undefined : this.onStartupData(chunk);
    if (this.state === 'closed') return;
    this.tx.heard(Date.now());
    const inbound = this.inbound;
    if (inbound.whole) {
      const service = this.service!;
      const messages = inbound.readMessages(chunk, service.name, service.onSessionState);
      if (typeof messages === 'string') return this.protocolViolation(messages);
      if (inbound.pinReason !== null) this.pin(inbound.pinReason);
      if (messages.length > 0) {
        if (this.state === 'linked' || this.linkIdle()) this.forward(messages);
        else this.holdAll(messages);
      }
    } else {
      const data = inbound.readBytes(chunk);
      if (typeof data === 'string') return this.protocolViolation(data);
      if (data.length > 0) {
        if (this.state === 'linked' || this.linkIdle()) {
          if (this.server && !this.server.write(data)) this.socket.pause();
        } else this.holdAll([data]);
      }
    }
    if (inbound.terminated) {
      this.closeReason = 'client terminated';
      this.socket.close();
    }
  }

  /**
   * Keeps client bytes until a server connection is linked, and asks for
   * one. Reading goes on while they are few, so a client that hangs up in
   * the queue is seen at once and leaves it; past PENDING_LIMIT the client
   * is paused.
   */
  private holdAll(data: Buffer[]): void {
    for (const d of data) {
      this.pending.push(d);
      this.pendingBytes += d.length;
    }
    if (this.pendingBytes > PENDING_LIMIT) this.socket.pause();
    if (this.state === 'idle') this.requestServer(false);
  }

  /**
   * Writes whole client messages to the linked server, with statement names
   * rewritten; pauses the client while the server socket is full. Returns
   * false when it paused.
   */
  private forward(messages: Buffer[]): boolean {
    const conn = this.server;
    if (!conn) return true;
    const bytes = this.statementLayer.toServer(messages, this.outbound.serverStatements!);
    if (bytes === null) {
      if (this.statementLayer.heldBytes > PENDING_LIMIT) this.socket.pause();
      return true;
    }
    if (conn.write(bytes)) return true;
    this.socket.pause();
    return false;
  }

  /** The shape check that held the client's messages is answered: they go on, or are refused as PostgreSQL would. */
  private resumeHeld(): void {
    const next = this.statementLayer.afterShapeCheck();
    if (this.forward(next) && this.statementLayer.held === null && this.socket.isPaused()) this.socket.resume();
  }

  /** Session state in transaction mode (onSessionState: pin): the client keeps its server connection. */
  private pin(reason: SessionStateReason): void {
    if (!this.tx.pin(reason)) return;
    const pins = this.stats().pins;
    pins[reason] = (pins[reason] ?? 0) + 1;
    this.ctx.log.info({ service: this.serviceName, pid: this.processId, reason }, 'client pinned to its server connection');
  }

  // ---- server → client ----

  private serverData(chunk: Buffer): void {
    const outbound = this.outbound;
    const data = outbound.push(chunk, Date.now());
    if (outbound.transactions !== 0) {
      this.stats().transactions += outbound.transactions;
      outbound.transactions = 0;
    }
    if (data instanceof FrameError) {
      this.tx.poisoned = true;
      this.closeReason = 'server protocol violation';
      return this.fatal(clientErrors.serverProtocolViolation(data.message), this.closeReason);
    }
    // A client socket that is gone cannot drain: never pause the server for it.
    if (data.length > 0 && !this.socket.write(data) && this.socket.writable) this.server?.pause();
    if (this.statementLayer.answered) this.resumeHeld();
    if (!this.server || !this.atTransactionBoundary) return;
    if (this.ctx.shuttingDown) {
      return this.endForShutdown();
    }
    if (this.service!.poolMode === 'transaction' && !this.tx.pinned) this.releaseServer(true);
  }

  private serverClosed(cause: string): void {
    // The server went away under the client (terminated, crashed, restarted).
    // If its last word was an ErrorResponse, the client has the reason already.
    this.server = null;
    this.outbound.serverStatements = null;
    const reason = `server connection closed: ${cause}`;
    if (this.outbound.lastType === Backend.ErrorResponse) {
      this.closeReason = reason;
      this.endWith(Buffer.alloc(0));
    } else {
      this.fatal(clientErrors.serverConnectionLost(cause), reason);
    }
  }

  // ---- holding a server connection ----

  private requestServer(forLogin: boolean): void {
    this.state = 'waiting';
    this.loginPending = forLogin;
    // The session is its own WaitHandlers: no closures per transaction.
    const waiter = this.ctx.pool.acquire(this.service!.name, this.key, this);
    if (this.state === 'waiting') this.waiter = waiter;
  }

  /**
   * The straight path: between transactions, an idle server connection is
   * taken at once when one is free and nobody is ahead in the queue, and
   * the client's messages go straight to it. False: the caller holds them
   * and asks the pool (requestServer).
   */
  private linkIdle(): boolean {
    if (this.state !== 'idle') return false;
    const conn = this.ctx.pool.takeIdle(this.service!.name, this.key);
    if (conn === null) return false;
    this.link(conn);
    return true;
  }

  private assigned(conn: ServerConnection): void {
    this.waiter = null;
    if (this.state !== 'waiting') {
      this.assigning = null;
      return this.ctx.pool.release(conn, true);
    }
    this.link(conn);
    if (this.loginPending) {
      this.loginPending = false;
      this.sendWelcome(conn.params);
      if (this.service!.poolMode === 'transaction' && this.atTransactionBoundary) this.releaseServer(true);
    }
  }

  private rejected(error: Buffer, reason: RejectedBecause): void {
    this.waiter = null;
    this.stats().rejections[reason]++;
    this.closeReason = reason;
    this.endWith(error);
  }

  private link(conn: ServerConnection): void {
    this.assigning = null;
    this.server = conn;
    if (this.inbound.whole) this.outbound.serverStatements = statementsOn(conn, this.ctx.config().maxPreparedStatements);
    conn.owner = this;
    this.state = 'linked';
    this.outbound.lastType = 0;
    // Time in the queue is not the statement's: queryTimeoutMs counts from here.
    this.tx.linked(Date.now());
    const pending = this.pending;
    this.pending = [];
    this.pendingBytes = 0;
    this.statementLayer.resetPending();
    if (this.inbound.whole) {
      if ((pending.length === 0 || this.forward(pending)) && this.socket.isPaused()) this.socket.resume();
      return;
    }
    let ok = true;
    for (const chunk of pending) ok = conn.write(chunk);
    if (ok && this.socket.isPaused()) this.socket.resume();
  }

  private releaseServer(reusable: boolean): void {
    const conn = this.server!;
    this.server = null;
    this.outbound.serverStatements = null;
    this.state = 'idle';
    this.ctx.pool.release(conn, reusable);
    if (this.socket.isPaused()) this.socket.resume();
  }

  /** Called on the target session of a CancelRequest: only a query in flight is cancelled. */
  private cancelOwn(secretKey: number, done: () => void): void {
    if (secretKey !== this.secretKey || this.tx.expectedReady === 0) return done();
    if (this.state === 'waiting' && this.waiter && this.service) {
      this.cancelQueued();
      return done();
    }
    const conn = this.server;
    if (!conn) return done();
    this.ctx.pool.cancelQuery(conn, () => this.server === conn && this.tx.expectedReady > 0, done);
  }

  /**
   * Cancel of a query still waiting for a server connection: it leaves the
   * queue and is answered as PostgreSQL answers a cancelled statement, with
   * one ReadyForQuery per Query or Sync it sent; it never runs.
   */
  private cancelQueued(): void {
    if (!this.inbound.atBoundary || this.tx.extendedOpen) return; // a batch still arriving: let it run and be cancelled there
    this.ctx.pool.cancelWait(this.waiter!);
    this.waiter = null;
    const replies = [errorResponse(clientErrors.queryCanceled())];
    for (let i = 0; i < this.tx.expectedReady; i++) replies.push(readyForQuery(this.tx.statusLetter));
    this.pending = [];
    this.pendingBytes = 0;
    this.statementLayer.reset();
    this.tx.answered();
    this.state = 'idle';
    this.socket.write(Buffer.concat(replies));
    this.socket.resume();
  }

  // ---- ending ----

  private fatal(fields: ErrorFields, reason: string): void {
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
    const wasState = this.state;
    this.state = 'closed';
    this.clearStartupDeadline();
    try {
      // Each field is cleared once what it held is given back: after a
      // failure here, abandon() gives back the rest.
      if (this.waiter) {
        this.ctx.pool.cancelWait(this.waiter);
        this.waiter = null;
      }
      const conn = this.server;
      if (conn) {
        conn.owner = null;
        const clean = this.atTransactionBoundary && conn.ready;
        if (clean && (this.service!.poolMode === 'session' || this.tx.pinned)) this.resetAndRelease(conn);
        else this.ctx.pool.release(conn, clean);
        this.server = null;
      }
    } finally {
      this.forget(wasState);
    }
  }

  /** Session state (SET, prepared statements, temp tables…) must not leak to the next client. */
  private resetAndRelease(conn: ServerConnection): void {
    const pool = this.ctx.pool;
    // Promise continuations are entry points too: a failure in one closes
    // the server connection (the pool frees its slot), nothing more.
    conn.query('DISCARD ALL').then(
      () => {
        try {
          statementsOn(conn, 0)?.clear();
          pool.release(conn, true);
        } catch (err) {
          this.ctx.log.error({ err, service: this.serviceName }, 'pgbudget: internal error after a reset; server connection closed');
          conn.destroy('internal error after reset');
        }
      },
      () => {
        try {
          pool.release(conn, false);
        } catch {
          conn.destroy('reset failed');
        }
      },
    );
  }

  /** The session leaves the counters and the registry; once. */
  private forget(wasState: State): void {
    if (this.forgotten) return;
    this.forgotten = true;
    this.ctx.sessions.delete(this);
    if (!this.service) return;
    this.stats().clientsConnected--;
    if (this.ctx.log.isLevelEnabled('info')) {
      this.ctx.log.info(
        { service: this.service.name, pid: this.processId, durationMs: Date.now() - this.connectedAt, reason: this.closeReason, state: wasState },
        'client disconnected',
      );
    }
  }

  private clearStartupDeadline(): void {
    this.startupDeadline = 0;
  }

  /** This session's service counters; looked up once the service is known. */
  private stats(): ServiceStats {
    if (this.serviceStats) return this.serviceStats;
    const st = this.ctx.stats.service(this.serviceName);
    if (this.service) this.serviceStats = st;
    return st;
  }
}


const EMPTY = Buffer.alloc(0);


const NOTHING = (): void => {};

/** The pool key of the last params object seen (startup.ts shares it between identical packets). */
let lastKeyParams: Readonly<Record<string, string>> | null = null;
let lastKey = '';

/**
 * The proxy's statements on each server connection, kept beside it: the
 * server layer knows nothing of them. A reset (DISCARD ALL) clears them.
 */
const statementsByConn = new WeakMap<ServerConnection, ServerStatements>();

/** The statements on `conn`; made (with room for `max`) when there are none yet and max > 0. */
function statementsOn(conn: ServerConnection, max: number): ServerStatements | null {
  let st = statementsByConn.get(conn);
  if (st === undefined && max > 0) statementsByConn.set(conn, (st = new ServerStatements(max)));
  return st ?? null;
}

/** Client bytes held while waiting for a server connection before the client is paused. */
const PENDING_LIMIT = 64 * 1024;
