// One client session: the startup handshake, finding its service, waiting
// for a server connection, forwarding in both directions with backpressure,
// and giving the server connection back at the right moment (end of
// transaction in transaction mode, end of session in session mode).
import { randomInt } from 'node:crypto';
import type { Logger } from 'pino';
import type { Waiter } from '../budget/scheduler.js';
import { UNMATCHED, type ServiceStats, type Stats } from '../budget/stats.js';
import type { Config, ServiceConfig } from '../types/config.js';
import { matchService } from './match.js';
import { clientErrors } from '../errors.js';
import { Backend, Frontend, TxStatus } from '../protocol/codes.js';
import {
  authenticationOk,
  BACKEND_KEY_DATA_BYTES,
  errorResponse,
  negotiateProtocolVersion,
  parameterStatus,
  readyForQuery,
  writeBackendKeyData,
  type ErrorFields,
} from '../protocol/encode.js';
import { clientConn, type ClientConn, type ClientConnHandler } from '../io/clientConn.js';
import type { Accepted } from '../io/reads.js';
import { MessageAssembler } from '../protocol/assembler.js';
import { FrameError, FrameScanner } from '../protocol/framing.js';
import { DROP, ReplyTrimmer, type ReplyListener } from '../protocol/replies.js';
import { buildQuery, frontendProblem, readParse, readQuery, rewordError } from '../protocol/messages.js';
import { parseStartupPacket, startupPacketLength, StartupPacketError, TERMINATE_BEFORE_STARTUP } from '../protocol/startup.js';
import { sliceOf } from '../protocol/views.js';
import type { ServerConnection, ServerOwner } from '../server/connection.js';
import { poolKey, type RejectedBecause, type ServerPool, type WaitHandlers } from '../server/pool.js';
import { SERVER_STATEMENT_PREFIX } from '../server/statements.js';
import { PreparedStatements, raiseStatement, type CompletionKind } from './prepared.js';
import type { SessionRegistry } from './registry.js';
import { RESERVED_MARK, SESSION_WORD } from './sqlWords.js';
import { detectSessionState, type SessionStateReason } from './sessionState.js';

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

/** Timeouts in ms, 0 for off (config: clientIdleTimeoutMs, idleInTransactionTimeoutMs, queryTimeoutMs). */
export interface SessionTimeouts {
  readonly clientIdleTimeoutMs: number;
  readonly idleInTransactionTimeoutMs: number;
  readonly queryTimeoutMs: number;
}

type State = 'startup' | 'idle' | 'waiting' | 'linked' | 'closed';

export class ClientSession implements ServerOwner, WaitHandlers, ClientConnHandler, ReplyListener {
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
  /** An unfinished message header at the end of the last client chunk, held back. */
  private heldHeader: Buffer | null = null;
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
  /** When the client last sent something or the server last became ready (ms since the epoch): idle timeouts count from here. */
  private quietSince: number;
  /** When the statement now running on the server was sent or became next in line; 0 when none runs. */
  private statementSince = 0;
  /** queryTimeoutMs cancelled the running statement: its 57014 is worded as statement_timeout's. */
  private timedOut = false;

  // Protocol position, from header-only scanning of both directions.
  /** ReadyForQuery messages still owed by the server (one per Query, Sync, FunctionCall). */
  private expectedReady = 0;
  private txStatus: number = TxStatus.Idle;
  /** Extended-protocol messages sent since the last Sync. */
  private extendedOpen = false;
  private inCopy = false;
  /** Syncs sent since the last Execute or Query: ignored by the server if that started a COPY FROM STDIN. */
  private syncsSinceExecute = 0;
  /** Between the server's CopyInResponse and the client's CopyDone/CopyFail: Syncs are ignored. */
  private clientCopyIn = false;
  /** A framing error on either side: the server connection's position is unknown. */
  private poisoned = false;

  // Transaction mode: whole client messages, prepared statements, session state.
  /** Set at login for transaction mode: client messages are read whole, not just framed. */
  private assembler: MessageAssembler | null = null;
  private readonly prepared = new PreparedStatements();
  /**
   * Held client messages that forward() must not rewrite: a Sync the server
   * will ignore (UNTOUCHED), or a refused Parse with the SQL that raises its
   * error. Null, and never looked at, in the usual case.
   */
  private special: Map<Buffer, string> | null = null;
  /** The last chunk that was cut into several messages, none replaced; its first and last views and their count. */
  private tile: Buffer | null = null;
  private tileFirst: Buffer | null = null;
  private tileLast: Buffer | null = null;
  private tileCount = 0;
  /** Why this client is pinned to its server connection (session state), or null. */
  private pinned: SessionStateReason | null = null;
  /**
   * Client messages waiting for a shape check (PreparedStatements.rewrite):
   * a statement was prepared again on this connection, and whether it still
   * returns rows in the shape the client knows is not yet answered.
   */
  private heldForShape: Buffer[] | null = null;
  private heldBytes = 0;
  /** Offset just past a Terminate in the chunk being scanned, or -1. */
  private terminateEnd = -1;
  private lastServerType = 0;
  private readonly clientScanner: FrameScanner;
  /** Server bytes on their way to the client, the answers to the proxy's own requests left out. */
  private readonly replies: ReplyTrimmer;

  private readonly socket: ClientConn;

  constructor(
    accepted: Accepted,
    private readonly ctx: SessionContext,
  ) {
    this.processId = ctx.sessions.nextProcessId(randomInt(0, 1024));
    this.secretKey = randomInt(0, 0x7fffffff);
    const cfg = ctx.config();
    this.clientScanner = new FrameScanner((type, _first, end) => this.onClientMessage(type, end), cfg.maxMessageBytes);
    this.replies = new ReplyTrimmer(this);
    this.socket = clientConn(accepted, this, { keepAliveMs: cfg.tcpKeepaliveMs });
    // Registered once nothing here can fail: a session that could not start is never listed.
    ctx.sessions.add(this);
    this.startupTimeoutMs = cfg.startupTimeoutMs;
    this.startupDeadline = this.connectedAt + cfg.startupTimeoutMs;
    this.quietSince = this.connectedAt;
  }

  // ---- entry points ----
  //
  // Every call the event loop makes into this session, for this client's
  // bytes, its server connection's bytes, a pool hand-out, a sweep or a
  // shutdown, enters through one of these. Each is an error boundary: what
  // fails inside ends this client and nobody else (see failed()).

  onClientData(chunk: Buffer): void {
    try {
      this.clientData(chunk);
    } catch (err) {
      this.failed(err, 'client read');
    }
  }

  onClientDrain(): void {
    try {
      this.server?.socket.resume();
    } catch (err) {
      this.failed(err, 'client drain');
    }
  }

  onClientError(message: string): void {
    this.closeReason = `client socket error: ${message}`;
  }

  onClientClose(): void {
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
      this.cancel(secretKey, done);
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
    this.poisoned = true;
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
    const limits = this.ctx.timeouts(this.service.name);
    // The server owes nothing and the client is silent: it is the client's turn.
    const clientsTurn = this.expectedReady === 0 && !this.inCopy;
    // An extended-protocol batch not yet ended by a Sync holds its server connection as a transaction would.
    if (this.txStatus !== TxStatus.Idle || (this.extendedOpen && this.state === 'linked')) {
      if (clientsTurn && expired(limits.idleInTransactionTimeoutMs, this.quietSince, now)) this.idleTimedOut('idle_in_transaction_timeout');
    } else if (clientsTurn && !this.extendedOpen && expired(limits.clientIdleTimeoutMs, this.quietSince, now)) {
      this.idleTimedOut('client_idle_timeout');
    }
    if (this.statementSince !== 0 && !this.timedOut && this.state === 'linked' && expired(limits.queryTimeoutMs, this.statementSince, now)) {
      this.cancelForTimeout();
    }
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
    this.timedOut = true;
    // The reworded error must be seen whole, in session mode too.
    this.replies.trims = true;
    const statement = this.statementSince;
    this.stats().queryTimeouts++;
    this.ctx.pool.cancelQuery(conn, () => this.server === conn && this.statementSince === statement && this.expectedReady > 0, NOTHING);
  }

  get serviceName(): string {
    return this.service?.name ?? UNMATCHED;
  }

  /** Between transactions, with no server work outstanding. */
  get atTransactionBoundary(): boolean {
    return (
      !this.poisoned &&
      this.expectedReady === 0 &&
      this.txStatus === TxStatus.Idle &&
      !this.extendedOpen &&
      !this.inCopy &&
      this.clientScanner.atBoundary &&
      this.replies.atBoundary &&
      this.heldHeader === null &&
      this.heldForShape === null &&
      (this.assembler?.atBoundary ?? true)
    );
  }

  // ---- startup ----

  private onStartupData(chunk: Buffer): void {
    let buf = this.startupBuf!.length ? Buffer.concat([this.startupBuf!, chunk]) : chunk;
    for (;;) {
      let length: number;
      try {
        length = startupPacketLength(buf);
      } catch (err) {
        return this.protocolViolation((err as Error).message);
      }
      if (length === TERMINATE_BEFORE_STARTUP) {
        // PostgreSQL closes without a word here too.
        this.closeReason = 'client terminated before startup';
        this.socket.close();
        return;
      }
      if (length < 0 || buf.length < length) {
        this.startupBuf = buf;
        return;
      }
      // Usually the chunk is the packet: no views to make.
      const whole = length === buf.length;
      const packet = whole ? buf : sliceOf(buf, 0, length);
      buf = whole ? EMPTY : sliceOf(buf, length, buf.length);
      let parsed;
      try {
        parsed = parseStartupPacket(packet);
      } catch (err) {
        if (err instanceof StartupPacketError) return this.protocolViolation(err.message);
        throw err;
      }
      switch (parsed.kind) {
        case 'ssl':
        case 'gssenc':
          // Encryption comes in a later version: answer "not supported", the client goes on in plain text.
          this.socket.write(ENCRYPTION_REFUSED);
          continue;
        case 'cancel': {
          // PostgreSQL closes a cancel connection once it has signalled the
          // backend, and libpq's PQcancel waits for that close: so does the
          // proxy, so a cancel that arrives late can never hit the client's
          // next statement. Bounded by the upstream cancel's own timeout.
          this.clearStartupDeadline();
          this.cancelling = true;
          this.closeReason = 'cancel request';
          const target = this.ctx.sessions.get(parsed.processId);
          const close = () => this.destroySocket();
          if (target && target !== this) target.cancelRequested(parsed.secretKey, close);
          else close();
          return;
        }
        case 'startup':
          this.startupBuf = null;
          if (parsed.minorVersion !== 0 || parsed.protocolOptions.length > 0) {
            this.socket.write(negotiateProtocolVersion(0, parsed.protocolOptions));
          }
          this.onStartupMessage(parsed.params);
          // Anything the client pipelined after its startup packet is ordinary traffic.
          if (buf.length > 0 && this.state !== 'closed') this.clientData(Buffer.from(buf));
          return;
      }
    }
  }

  /** A malformed packet from the client: 08P01, and the server connection (if any) is not reused. */
  private protocolViolation(what: string): void {
    this.poisoned = true;
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
      this.assembler = new MessageAssembler(this.ctx.config().maxMessageBytes);
      this.replies.trims = true;
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
    this.quietSince = Date.now();
    if (this.assembler) return this.onClientMessages(chunk);
    this.terminateEnd = -1;
    const frameError = this.clientScanner.scan(chunk);
    if (frameError) return this.protocolViolation(frameError.message);
    // Forward whole headers only, so a Terminate is never half-sent to a
    // server connection that another client will use next.
    const held = this.heldHeader;
    let data = held ? Buffer.concat([held, chunk]) : chunk;
    if (this.terminateEnd >= 0) {
      data = data.subarray(0, (held?.length ?? 0) + this.terminateEnd - 5);
      this.heldHeader = null;
    } else {
      const partial = this.clientScanner.pendingHeaderBytes;
      this.heldHeader = partial > 0 ? Buffer.from(data.subarray(data.length - partial)) : null;
      if (partial > 0) data = data.subarray(0, data.length - partial);
    }
    if (data.length > 0) {
      if (this.state === 'linked') {
        if (this.server && !this.server.write(data)) this.socket.pause();
      } else {
        this.hold(data);
        if (this.state === 'idle') this.requestServer(false);
      }
    }
    if (this.terminateEnd >= 0) {
      this.closeReason = 'client terminated';
      this.socket.close();
    }
  }

  /**
   * Keeps client bytes until a server connection is linked. Reading goes on
   * while they are few, so a client that hangs up in the queue is seen at
   * once and leaves it; past PENDING_LIMIT the client is paused.
   */
  private hold(data: Buffer): void {
    this.pending.push(data);
    this.pendingBytes += data.length;
    if (this.pendingBytes > PENDING_LIMIT) this.socket.pause();
  }

  /** Transaction mode: whole messages, so statement names and session state can be seen and changed. */
  private onClientMessages(chunk: Buffer): void {
    const messages: Buffer[] = [];
    const fromBoundary = this.assembler!.atBoundary;
    const frameError = this.assembler!.push(chunk, messages);
    if (frameError) return this.protocolViolation(frameError.message);
    let terminated = false;
    let replaced = false;
    for (let i = 0; i < messages.length; i++) {
      const msg = messages[i];
      const type = msg[0];
      if (type === Frontend.Terminate) {
        terminated = true;
        messages.length = i; // nothing after a Terminate is sent
        break;
      }
      // Checked before anything reads it: a malformed message ends the client, with its reason.
      const problem = frontendProblem(msg);
      if (problem !== null) return this.protocolViolation(problem);
      const ignoredSync = type === Frontend.Sync && this.clientCopyIn;
      this.onClientMessage(type, 0);
      if (ignoredSync) {
        // The server ignores it during COPY FROM STDIN: passes untouched, uncounted.
        (this.special ??= new Map()).set(msg, UNTOUCHED);
      } else if (type === Frontend.Query || type === Frontend.Parse) {
        const checked = this.checkStatement(msg);
        if (checked !== msg) {
          messages[i] = checked;
          replaced = true;
        }
      }
    }
    // Several messages that make up the whole chunk, none replaced: if they
    // also go out unchanged, the chunk itself is written (see forward).
    if (messages.length > 1 && fromBoundary && this.assembler!.atBoundary && !terminated && !replaced) {
      this.tile = chunk;
      this.tileFirst = messages[0];
      this.tileLast = messages[messages.length - 1];
      this.tileCount = messages.length;
    }
    if (messages.length > 0) {
      if (this.state === 'linked') this.forward(messages);
      else {
        for (const m of messages) this.hold(m);
        if (this.state === 'idle') this.requestServer(false);
      }
    }
    if (terminated) {
      this.closeReason = 'client terminated';
      this.socket.close();
    }
  }

  /**
   * Writes whole client messages to the linked server, with statement names
   * rewritten; pauses the client while the server socket is full. Returns
   * false when it paused.
   */
  private forward(messages: Buffer[]): boolean {
    const conn = this.server;
    if (!conn) return true;
    const waiting = this.heldForShape;
    if (waiting !== null) {
      // Behind messages that wait for a shape check: they go after them, in order.
      for (const m of messages) {
        waiting.push(m);
        this.heldBytes += m.length;
      }
      if (this.heldBytes > PENDING_LIMIT) this.socket.pause();
      return true;
    }
    const out: Buffer[] = [];
    const special = this.special;
    for (let i = 0; i < messages.length; i++) {
      const m = messages[i];
      if (special !== null && special.has(m)) {
        const refusal = special.get(m)!;
        special.delete(m);
        if (refusal === UNTOUCHED) out.push(m);
        else this.prepared.refuse(refusal, conn.statements, out);
      } else if (!this.prepared.rewrite(m, conn.statements, out)) {
        this.heldForShape = messages.slice(i);
        break;
      }
    }
    if (special?.size === 0) this.special = null;
    if (conn.write(this.joined(messages, out))) return true;
    this.socket.pause();
    return false;
  }

  /**
   * The shape check that held the client's messages is answered. If the
   * statement now returns rows in another shape, PostgreSQL would refuse its
   * Bind (or Describe) with 0A000 and skip what follows up to the Sync: so
   * does the proxy, with PostgreSQL's own error. Else they go on as sent.
   */
  private resumeHeld(): void {
    const held = this.heldForShape!;
    this.heldForShape = null;
    this.heldBytes = 0;
    const next = this.prepared.afterShapeCheck(held);
    // Messages PostgreSQL would skip are never sent: nothing is left to do for them.
    const special = this.special;
    if (special !== null && next.length < held.length) for (const m of held) if (!next.includes(m)) special.delete(m);
    if (this.forward(next) && this.heldForShape === null && this.socket.isPaused()) this.socket.resume();
  }

  /**
   * One buffer for the server: the client's own chunk when `out` is exactly
   * the messages that were cut from it (the usual extended-protocol batch),
   * else a copy of them all. Identity, not addresses: the first and last
   * views and the count pin down the tile, since messages keep their order.
   */
  private joined(messages: Buffer[], out: Buffer[]): Buffer {
    const tile = this.tile;
    const first = this.tileFirst;
    const last = this.tileLast;
    // Held no longer than one forward: the chunk is not kept alive while the client idles.
    this.tile = this.tileFirst = this.tileLast = null;
    if (out.length === 1) return out[0];
    if (tile !== null && out.length === this.tileCount && out[0] === first && out[out.length - 1] === last) {
      let same = out.length === messages.length;
      for (let i = 0; same && i < out.length; i++) same = out[i] === messages[i];
      if (same) return tile;
    }
    return Buffer.concat(out);
  }

  /**
   * Session state in transaction mode: pin the client to its server
   * connection, or (onSessionState: error) replace the statement with one
   * that fails with our error, which keeps the protocol in step.
   */
  private checkStatement(msg: Buffer): Buffer {
    // Most statements name none of the words the checks below need: not even decoded.
    if ((this.prepared.sqlWords(msg) & (SESSION_WORD | RESERVED_MARK)) === 0) return msg;
    const isQuery = msg[0] === Frontend.Query;
    const parsed = isQuery ? null : readParse(msg);
    const sql = isQuery ? readQuery(msg) : parsed!.query;
    const service = this.service!;
    // The server holds the proxy's statements for everyone on the connection: SQL must not name them.
    if (sql.includes('__') && sql.toLowerCase().includes(SERVER_STATEMENT_PREFIX)) return this.refused(msg, clientErrors.reservedStatementName(SERVER_STATEMENT_PREFIX));
    const reason = detectSessionState(sql);
    if (!reason) return msg;
    if (service.onSessionState === 'error') {
      return this.refused(msg, clientErrors.sessionStateRefused(service.name, SESSION_STATE_WHAT[reason]));
    }
    if (!this.pinned) {
      this.pinned = reason;
      const pins = this.stats().pins;
      pins[reason] = (pins[reason] ?? 0) + 1;
      this.ctx.log.info({ service: service.name, pid: this.processId, reason }, 'client pinned to its server connection');
    }
    return msg;
  }

  /**
   * A statement replaced by one the server itself fails with our error: a
   * Query by a failing Query; a Parse by the proxy's own unnamed Parse, Bind
   * and Execute (see PreparedStatements.refuse), so the protocol stays in step.
   */
  private refused(msg: Buffer, e: ErrorFields): Buffer {
    const raise = raiseStatement(e.code, e.message, e.hint ?? '');
    if (msg[0] === Frontend.Query) return buildQuery(raise);
    (this.special ??= new Map()).set(msg, raise);
    return msg;
  }

  private onClientMessage(type: number, end: number): void {
    switch (type) {
      case Frontend.Query:
        this.syncsSinceExecute = 0;
        if (this.expectedReady++ === 0) this.statementSince = this.quietSince;
        break;
      case Frontend.FunctionCall:
        if (this.expectedReady++ === 0) this.statementSince = this.quietSince;
        break;
      case Frontend.Sync:
        if (this.clientCopyIn) break; // ignored by the server during COPY FROM STDIN
        if (this.expectedReady++ === 0) this.statementSince = this.quietSince;
        this.syncsSinceExecute++;
        this.extendedOpen = false;
        break;
      case Frontend.Execute:
        this.syncsSinceExecute = 0;
        this.extendedOpen = true;
        break;
      case Frontend.Parse:
      case Frontend.Bind:
      case Frontend.Describe:
      case Frontend.Close:
      case Frontend.Flush:
        this.extendedOpen = true;
        break;
      case Frontend.CopyDone:
      case Frontend.CopyFail:
        this.clientCopyIn = false;
        break;
      case Frontend.Terminate:
        this.terminateEnd = end;
        break;
    }
  }

  // ---- server → client ----

  private serverData(chunk: Buffer): void {
    // Answers to a batch the client has not ended with a Sync (Execute, Flush): the server's turn, not an idle client.
    if (this.extendedOpen) this.quietSince = Date.now();
    const data = this.replies.push(chunk);
    if (data instanceof FrameError) {
      this.poisoned = true;
      this.closeReason = 'server protocol violation';
      return this.fatal(clientErrors.serverProtocolViolation(data.message), this.closeReason);
    }
    // A client socket that is gone cannot drain: never pause the server for it.
    if (data.length > 0 && !this.socket.write(data) && this.socket.writable) this.server?.socket.pause();
    if (this.heldForShape !== null && this.prepared.shapeVerdict !== 'waiting') this.resumeHeld();
    if (!this.server || !this.atTransactionBoundary) return;
    if (this.ctx.shuttingDown) {
      return this.endForShutdown();
    }
    if (this.service!.poolMode === 'transaction' && !this.pinned) this.releaseServer(true);
  }

  /** ReplyListener: while the proxy's own answers are due, they are read whole. */
  get holdsWholeMessages(): boolean {
    return this.prepared.expectsOwnReplies || this.timedOut;
  }

  /** ReplyListener: one server message; null forwards it, DROP leaves it out, other bytes replace it. */
  onReply(type: number, first: number, bytes: Buffer, start: number, end: number): Buffer | null {
    this.lastServerType = type;
    switch (type) {
      case Backend.ParseComplete:
      case Backend.BindComplete:
      case Backend.CloseComplete:
        if (this.assembler && this.prepared.onComplete(COMPLETION[type])) return DROP;
        break;
      case Backend.ParameterDescription:
      case Backend.RowDescription:
      case Backend.NoData:
        if (this.assembler && this.server && this.prepared.onDescription(type, bytes, start, end, this.server.statements)) return DROP;
        break;
      case Backend.ErrorResponse: {
        // The proxy's failing statement: the client gets the error PostgreSQL itself would send.
        const instead = this.server ? this.prepared.onError(this.server.statements) : null;
        if (instead !== null || !this.timedOut || start < 0) return instead;
        return rewordError(bytes, start, end, QUERY_CANCELED, STATEMENT_TIMEOUT.message);
      }
      case Backend.ReadyForQuery:
        if (this.server) this.prepared.onReadyForQuery(this.server.statements);
        if (this.expectedReady > 0) this.expectedReady--;
        // The next statement in line starts now; the idle timeouts count from here when none is.
        this.quietSince = Date.now();
        this.statementSince = this.expectedReady > 0 ? this.quietSince : 0;
        this.timedOut = false;
        this.txStatus = first;
        this.inCopy = false;
        if (first === TxStatus.Idle) this.stats().transactions++;
        break;
      case Backend.CopyInResponse:
        // Syncs the client pipelined after the Execute that started this COPY
        // are ignored by the server: they will get no ReadyForQuery.
        this.expectedReady = Math.max(0, this.expectedReady - this.syncsSinceExecute);
        this.prepared.dropIgnoredSyncs(this.syncsSinceExecute);
        this.syncsSinceExecute = 0;
        this.clientCopyIn = true;
        this.inCopy = true;
        break;
      case Backend.CopyOutResponse:
      case Backend.CopyBothResponse:
        this.inCopy = true;
        break;
    }
    return null;
  }

  private serverClosed(cause: string): void {
    // The server went away under the client (terminated, crashed, restarted).
    // If its last word was an ErrorResponse, the client has the reason already.
    this.server = null;
    const reason = `server connection closed: ${cause}`;
    if (this.lastServerType === Backend.ErrorResponse) {
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
    conn.owner = this;
    this.state = 'linked';
    this.lastServerType = 0;
    // Time in the queue is not the statement's: queryTimeoutMs counts from here.
    if (this.statementSince !== 0) this.statementSince = Date.now();
    const pending = this.pending;
    this.pending = [];
    this.pendingBytes = 0;
    this.prepared.resetPending();
    if (this.assembler) {
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
    this.state = 'idle';
    this.ctx.pool.release(conn, reusable);
    if (this.socket.isPaused()) this.socket.resume();
  }

  /** Called on the target session of a CancelRequest: only a query in flight is cancelled. */
  private cancel(secretKey: number, done: () => void): void {
    if (secretKey !== this.secretKey || this.expectedReady === 0) return done();
    if (this.state === 'waiting' && this.waiter && this.service) {
      this.cancelQueued();
      return done();
    }
    const conn = this.server;
    if (!conn) return done();
    this.ctx.pool.cancelQuery(conn, () => this.server === conn && this.expectedReady > 0, done);
  }

  /**
   * Cancel of a query still waiting for a server connection: it leaves the
   * queue and is answered as PostgreSQL answers a cancelled statement, with
   * one ReadyForQuery per Query or Sync it sent; it never runs.
   */
  private cancelQueued(): void {
    const atBoundary = this.assembler ? this.assembler.atBoundary : this.clientScanner.atBoundary && !this.heldHeader;
    if (!atBoundary || this.extendedOpen) return; // a batch still arriving: let it run and be cancelled there
    this.ctx.pool.cancelWait(this.waiter!);
    this.waiter = null;
    const replies = [errorResponse(clientErrors.queryCanceled())];
    for (let i = 0; i < this.expectedReady; i++) replies.push(readyForQuery(statusLetter(this.txStatus)));
    this.pending = [];
    this.pendingBytes = 0;
    this.special = null;
    this.expectedReady = 0;
    this.statementSince = 0;
    this.prepared.resetPending();
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
        if (clean && (this.service!.poolMode === 'session' || this.pinned)) this.resetAndRelease(conn);
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
          conn.statements.clear();
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


/** A timeout that is on (over 0) and has run out since `since`. */
function expired(limitMs: number, since: number, now: number): boolean {
  return limitMs > 0 && now - since >= limitMs;
}

function statusLetter(status: number): 'I' | 'T' | 'E' {
  return status === TxStatus.InTransaction ? 'T' : status === TxStatus.Failed ? 'E' : 'I';
}

const EMPTY = Buffer.alloc(0);

/** The answer to SSLRequest and GSSENCRequest: 'N', not supported. */
const ENCRYPTION_REFUSED = Buffer.from('N');

const READY_IDLE = readyForQuery('I');

const QUERY_CANCELED = '57014';
const NOTHING = (): void => {};
const STATEMENT_TIMEOUT = clientErrors.statementTimeout();

/**
 * AuthenticationOk and the server's ParameterStatus messages, the part of a
 * welcome every client of a pool key shares (application_name is each
 * client's own): encoded once per key, not per login.
 */
const welcomeBlocks = new WeakMap<[string, string][], Buffer>();

/** The pool key of the last params object seen (startup.ts shares it between identical packets). */
let lastKeyParams: Readonly<Record<string, string>> | null = null;
let lastKey = '';

function welcomeBlock(params: [string, string][]): Buffer {
  const parts = [authenticationOk()];
  for (const [name, value] of params) if (name !== 'application_name') parts.push(parameterStatus(name, value));
  return Buffer.concat(parts);
}

// The last welcome's shared part with its application_name: clients that
// connect again and again (a connection per request) send the same name, and
// encoding it anew was a third of the proxy's work in a login.
let lastWelcomeBlock: Buffer | null = null;
let lastApplicationName = '';
let lastWelcomeHead = EMPTY;

/** AuthenticationOk, the server's parameters, the client's application_name, BackendKeyData and ReadyForQuery, in one Buffer. */
function welcome(params: [string, string][], applicationName: string, processId: number, secretKey: number): Buffer {
  let block = welcomeBlocks.get(params);
  if (!block) {
    block = welcomeBlock(params);
    welcomeBlocks.set(params, block);
  }
  if (block !== lastWelcomeBlock || applicationName !== lastApplicationName) {
    lastWelcomeBlock = block;
    lastApplicationName = applicationName;
    lastWelcomeHead = Buffer.concat([block, parameterStatus('application_name', applicationName)]);
  }
  const head = lastWelcomeHead;
  const out = Buffer.allocUnsafe(head.length + BACKEND_KEY_DATA_BYTES + READY_IDLE.length);
  head.copy(out, 0);
  writeBackendKeyData(out, head.length, processId, secretKey);
  READY_IDLE.copy(out, head.length + BACKEND_KEY_DATA_BYTES);
  return out;
}

/** Client bytes held while waiting for a server connection before the client is paused. */
const PENDING_LIMIT = 64 * 1024;

/** In ClientSession.special: forwarded without rewriting or counting (a Sync the server ignores). */
const UNTOUCHED = '';


const COMPLETION: Record<number, CompletionKind> = {
  [Backend.ParseComplete]: 'parse',
  [Backend.BindComplete]: 'bind',
  [Backend.CloseComplete]: 'close',
};

const SESSION_STATE_WHAT: Record<SessionStateReason, string> = {
  set: 'SET',
  listen: 'LISTEN',
  advisory_lock: 'a session advisory lock',
  temp_table: 'CREATE TEMP',
  prepare: 'PREPARE',
  cursor_with_hold: 'DECLARE … WITH HOLD',
  load: 'LOAD',
};


