// A session's hold on a server connection: asking the pool for one, keeping
// the client's bytes until it is there, writing them to it with
// backpressure, the server's replies on to the client, cancel, and giving
// the connection back (at the end of a transaction in transaction mode, of
// the session in session mode, unclean after a failure). The session keeps
// the client side: handshake, timeouts, ending.
import type { Logger } from 'pino';
import type { Waiter } from '../budget/scheduler.js';
import type { ServiceStats } from '../budget/stats.js';
import type { Config, ServiceConfig } from '../types/config.js';
import { FrameError } from '../protocol/framing.js';
import type { Transport } from '../io/transport.js';
import type { ServerConnection, ServerOwner } from '../server/connection.js';
import type { RejectedBecause, ServerPool, WaitHandlers } from '../server/pool.js';
import type { ClientInbound } from '../client/inbound.js';
import type { ClientOutbound } from '../client/outbound.js';
import { ServerStatements } from '../client/serverStatements.js';
import type { StatementLayer } from '../client/statementLayer.js';
import type { TransactionTracker } from '../client/transaction.js';
import { mergeReported, settingsSql, UNKNOWN, type Settings } from '../server/settings.js';
import { errorResponse, type ErrorFields } from '../protocol/encode.js';
import { Cancels, type CancelSubject } from './cancel.js';
import type { LoginKeys } from './admission.js';
import type { ClientSide } from './clientSide.js';

export interface LinkContext {
  config(): Config;
  readonly pool: ServerPool;
  readonly log: Logger;
  readonly shuttingDown: boolean;
}

/** What a link asks of its session. */
export interface LinkOwner {
  /** An error boundary caught `err`: the session ends this client (and calls abandon()). */
  failed(err: unknown, where: string): void;
  /** The login's server connection is there: the client's welcome, with its parameters and process id. */
  welcome(params: [string, string][], serverPid: number): void;
  /** No server connection for this client; `error` is a whole ErrorResponse, of code `sqlstate` when pgbudget wrote it (null: the server's). */
  rejected(error: Buffer, reason: RejectedBecause, sqlstate: string | null): void;
  /** The linked server connection closed under the client. */
  serverLost(cause: string): void;
  /** The server sent bytes that are not the protocol. */
  serverViolation(message: string): void;
  /** A transaction ended while the proxy shuts down. */
  endForShutdown(): void;
  stats(): ServiceStats;
}

export type LinkState = 'idle' | 'waiting' | 'linked' | 'closed';

export class ServerLink implements ServerOwner, WaitHandlers, CancelSubject {
  state: LinkState = 'idle';
  private service: ServiceConfig | null = null;
  private key = '';
  private welcomeKey = '';
  /** What the client's startup parameters ask of every server connection it gets (server/settings.ts); null: nothing. */
  private settings: Settings | null = null;
  /** The settings query sent at the last checkout has not answered yet (CancelSubject: cancels wait for it). */
  settling = false;
  /** The login's welcome waits for that answer. */
  private welcomeDue = false;
  /** A statement that may reset settings went to the server (or will, with the next forward). */
  private resetPending = false;
  /** The server connection is this client's alone (replication): never reset or reused, closed with the client. */
  private dedicated = false;
  private server: ServerConnection | null = null;
  private waiter: Waiter | null = null;
  /** The server connection being waited for is the first login for this pool key: the client gets its welcome from it. */
  private loginPending = false;
  /** A server connection being handed over (onAssign), until it is linked or given back. */
  private assigning: ServerConnection | null = null;
  /** Client bytes that arrived while no server connection was linked. */
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  /** The client's cancels, against where its statement is. */
  readonly cancels: Cancels;

  private socket: Transport;
  private readonly tx: TransactionTracker;
  private readonly statementLayer: StatementLayer;
  private readonly inbound: ClientInbound;
  private readonly outbound: ClientOutbound;

  constructor(
    private readonly ctx: LinkContext,
    private readonly owner: LinkOwner,
    client: ClientSide,
  ) {
    this.socket = client.socket;
    this.tx = client.tx;
    this.statementLayer = client.statementLayer;
    this.inbound = client.inbound;
    this.outbound = client.outbound;
    this.cancels = new Cancels(ctx.pool, this, client, owner);
  }

  /** The client's connection became a TLS one (during its admission, before any server is linked). */
  clientUpgraded(socket: Transport): void {
    this.socket = socket;
  }

  /** The client's service and pool key are known (startup is done); `dedicated`: its server connection is closed with it. */
  open(service: ServiceConfig, login: LoginKeys, dedicated = false): void {
    this.service = service;
    this.key = login.key;
    this.welcomeKey = login.welcomeKey;
    this.settings = login.settings;
    this.dedicated = dedicated;
  }

  /**
   * The client sent a statement that may put settings back to the server
   * connection's login values (RESET, DISCARD ALL): whichever connection it
   * runs on, its settings are unknown after it, and the next checkout sets
   * them all again.
   */
  settingsMayReset(): void {
    if (this.state === 'linked' && this.server) this.server.settings = UNKNOWN;
    else this.resetPending = true;
  }

  // ---- entry points ----
  //
  // The calls the event loop makes into this link, for its server
  // connection's bytes and for a pool hand-out. Each is an error boundary:
  // what fails inside ends this client and nobody else (the owner's failed()).

  onServerData(chunk: Buffer): void {
    try {
      this.serverData(chunk);
    } catch (err) {
      this.owner.failed(err, 'server read');
    }
  }

  onServerDrain(): void {
    try {
      this.socket.resume();
    } catch (err) {
      this.owner.failed(err, 'server drain');
    }
  }

  onServerClose(cause: string): void {
    try {
      this.serverClosed(cause);
    } catch (err) {
      this.owner.failed(err, 'server close');
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
      this.owner.failed(err, 'server hand-out');
    }
    this.assigning = null;
  }

  /** WaitHandlers: no server connection for this client (queue full or timed out, login refused). */
  onReject(error: Buffer, reason: RejectedBecause, sqlstate: string | null): void {
    try {
      this.waiter = null;
      this.owner.rejected(error, reason, sqlstate);
    } catch (err) {
      this.owner.failed(err, 'queue rejection');
    }
  }

  /** Between transactions, with no server work outstanding. */
  get atBoundary(): boolean {
    return this.tx.quiet && this.inbound.atBoundary && this.outbound.atBoundary && this.statementLayer.held === null;
  }

  // ---- client → server ----

  /** Whole client messages (transaction mode): to the linked server connection, or held until there is one. */
  sendMessages(messages: Buffer[]): void {
    if (this.state === 'linked' || this.linkIdle()) this.forward(messages);
    else this.hold(messages);
  }

  /** Client bytes as they came (session mode). */
  sendBytes(data: Buffer): void {
    if (this.state === 'linked' || this.linkIdle()) {
      if (this.server && !this.server.write(data)) this.socket.pause();
    } else this.hold([data]);
  }

  /** The client's socket drained: the server connection may be read again. */
  clientDrained(): void {
    this.server?.resume();
  }

  /**
   * A server connection at login, queued like any other request: session
   * mode binds it for the whole session; in transaction mode (the first
   * client of a pool key) it teaches the server's parameters and goes back.
   */
  requestLogin(): void {
    this.requestServer(true);
  }

  /**
   * Keeps client bytes until a server connection is linked, and asks for
   * one. Reading goes on while they are few, so a client that hangs up in
   * the queue is seen at once and leaves it; past PENDING_LIMIT the client
   * is paused.
   */
  private hold(data: Buffer[]): void {
    for (const d of data) {
      this.pending.push(d);
      this.pendingBytes += d.length;
    }
    if (this.pendingBytes > PENDING_LIMIT) this.socket.pause();
    if (this.state === 'idle') this.requestServer(false);
    else if (this.cancels.owes) this.cancels.settle();
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
    if (this.cancels.owes) this.cancels.settle();
  }

  // ---- server → client ----

  private serverData(chunk: Buffer): void {
    const outbound = this.outbound;
    const data = outbound.push(chunk, Date.now());
    if (outbound.transactions !== 0) {
      this.owner.stats().transactions += outbound.transactions;
      outbound.transactions = 0;
    }
    if (data instanceof FrameError) {
      this.tx.poisoned = true;
      return this.owner.serverViolation(data.message);
    }
    // A client socket that is gone cannot drain: never pause the server for it.
    if (data.length > 0 && !this.socket.write(data) && this.socket.writable) this.server?.pause();
    if (this.statementLayer.answered) this.resumeHeld();
    else if (this.cancels.owes) this.cancels.settle();
    if (!this.server || !this.atBoundary) return;
    if (this.ctx.shuttingDown) return this.owner.endForShutdown();
    if (this.service!.poolMode === 'transaction' && !this.tx.pinned) this.release(true);
  }

  private serverClosed(cause: string): void {
    // The server went away under the client (terminated, crashed, restarted).
    this.server = null;
    this.outbound.serverStatements = null;
    this.owner.serverLost(cause);
  }

  // ---- holding a server connection ----

  private requestServer(forLogin: boolean): void {
    this.state = 'waiting';
    this.loginPending = forLogin;
    // The link is its own WaitHandlers: no closures per transaction.
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
    try {
      this.attach(conn);
    } catch (err) {
      // A hand-out that failed half way: the connection is this client's to give back (abandon()).
      if (this.server === null) this.server = conn;
      this.owner.failed(err, 'server hand-out');
    }
    return true;
  }

  private assigned(conn: ServerConnection): void {
    this.waiter = null;
    if (this.state !== 'waiting') {
      this.assigning = null;
      return this.ctx.pool.release(conn, true);
    }
    this.attach(conn);
    if (this.loginPending) {
      this.loginPending = false;
      if (this.settling) this.welcomeDue = true;
      else this.welcomeNow(conn);
    }
  }

  /** The login's welcome: the server connection's reported parameters, as the client's settings made them. */
  private welcomeNow(conn: ServerConnection): void {
    const params = mergeReported(conn.params, conn.reported);
    this.ctx.pool.rememberWelcome(this.welcomeKey, params);
    this.owner.welcome(params, conn.processId);
    if (this.service!.poolMode === 'transaction' && this.atBoundary && this.server === conn) this.release(true);
  }

  /**
   * Before the client's first message on a connection: the settings query
   * when the connection's differ from the client's, in the same write.
   */
  private applySettings(conn: ServerConnection): void {
    const want = this.settings;
    if (want === null || conn.settings.sig === want.sig) return;
    const sql = settingsSql(conn.settings, want)!;
    conn.settings = want;
    this.settling = true;
    conn.applySettings(sql, (error) => this.onSettled(conn, error));
  }

  /** The settings query answered (an entry point: its own error boundary). */
  private onSettled(conn: ServerConnection, error: ErrorFields | null): void {
    try {
      this.settled(conn, error);
    } catch (err) {
      this.owner.failed(err, 'settings applied');
    }
  }

  private settled(conn: ServerConnection, error: ErrorFields | null): void {
    this.settling = false;
    const welcomeDue = this.welcomeDue;
    this.welcomeDue = false;
    if (error !== null) {
      // Rolled back (one implicit transaction): what the connection has is not known now.
      conn.settings = UNKNOWN;
      if (this.server !== conn || this.state === 'closed') return;
      if (welcomeDue) {
        // A value the server refuses, as it would refuse it at login: the client's login fails with its words.
        return this.owner.rejected(errorResponse({ ...error, severity: 'FATAL' }), 'server_login', null);
      }
      // The client's statements are on their way behind it, on a connection without its settings: never run them there.
      conn.destroy(`settings query failed: ${error.code} ${error.message}`);
      return;
    }
    if (welcomeDue && this.server === conn && this.state !== 'closed') this.welcomeNow(conn);
    if (this.cancels.owes) this.cancels.settle();
  }

  private attach(conn: ServerConnection): void {
    this.assigning = null;
    this.server = conn;
    this.applySettings(conn);
    // What the client held includes a RESET or DISCARD ALL: it goes to this connection below.
    if (this.resetPending) {
      this.resetPending = false;
      conn.settings = UNKNOWN;
    }
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
      if (this.cancels.owes) this.cancels.settle();
      return;
    }
    let ok = true;
    for (const chunk of pending) ok = conn.write(chunk);
    if (ok && this.socket.isPaused()) this.socket.resume();
  }

  private release(reusable: boolean): void {
    const conn = this.server!;
    this.server = null;
    this.outbound.serverStatements = null;
    this.state = 'idle';
    this.ctx.pool.release(conn, reusable);
    if (this.socket.isPaused()) this.socket.resume();
  }

  // ---- what the cancels ask (CancelSubject) ----

  get queued(): boolean {
    return this.state === 'waiting';
  }

  get linkedServer(): ServerConnection | null {
    return this.server;
  }

  /** A cancelled batch leaves the queue unrun: `replies` answer it. */
  answerQueued(replies: Buffer): void {
    this.ctx.pool.cancelWait(this.waiter!);
    this.waiter = null;
    this.pending = [];
    this.pendingBytes = 0;
    this.statementLayer.reset();
    this.tx.answered();
    this.state = 'idle';
    this.socket.write(replies);
    this.socket.resume();
  }

  // ---- giving back ----

  /**
   * The session ends: what the link holds goes back. A server connection
   * between transactions is reused (reset first if it may carry session
   * state); inside one it is closed. Each field is cleared once what it
   * held is given back: after a failure here, abandon() gives back the rest.
   */
  close(): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    if (this.waiter) {
      this.ctx.pool.cancelWait(this.waiter);
      this.waiter = null;
    }
    this.cancels.drop();
    const conn = this.server;
    if (conn) {
      conn.owner = null;
      // A settings query still running: its replies are yet to come; never handed to anyone.
      const clean = this.atBoundary && conn.ready && !this.dedicated && !this.settling;
      if (clean && (this.service!.poolMode === 'session' || this.tx.pinned)) this.resetAndRelease(conn);
      else this.ctx.pool.release(conn, clean);
      this.server = null;
    }
  }

  /**
   * After a failure: whatever the link still holds goes back, unclean, each
   * step on its own, so that one more failure cannot keep a slot. A server
   * connection that cannot even be released is destroyed: the pool frees
   * the slot of every server socket that closes.
   */
  abandon(): void {
    this.state = 'closed';
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
    try {
      this.cancels.drop();
    } catch {
      // The canceller's connection closes on its own timeout.
    }
  }

  /** Session state (SET, prepared statements, temp tables…) must not leak to the next client. */
  private resetAndRelease(conn: ServerConnection): void {
    const pool = this.ctx.pool;
    const log = this.ctx.log;
    const service = this.service!.name;
    // Promise continuations are entry points too: a failure in one closes
    // the server connection (the pool frees its slot), nothing more.
    conn.query('DISCARD ALL').then(
      () => {
        try {
          statementsOn(conn, 0)?.clear();
          conn.settingsReset();
          pool.release(conn, true);
        } catch (err) {
          log.error({ err, service }, 'pgbudget: internal error after a reset; server connection closed');
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
}

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
