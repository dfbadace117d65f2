// The pool of server connections of all services: carries out the
// scheduler's decisions (open, close, assign, reject), retries an absent
// upstream with backoff, and sweeps timeouts with one periodic timer.
import type { Logger } from 'pino';
import type { ScramClientKey } from './scram.js';
import { Scheduler, type Action, type Waiter } from '../budget/scheduler.js';
import type { Stats } from '../budget/stats.js';
import type { Config, ServiceConfig } from '../types/config.js';
import type { LeaseGate, ServiceUse } from '../types/coordination.js';
import { errorResponse, type ErrorFields } from '../protocol/encode.js';
import { clientErrors } from '../errors.js';
import { ServerConnection, ServerLoginError } from './connection.js';
import { parsePoolKey } from './poolKey.js';
import { probePostmaster, sendCancel } from './postmaster.js';
import { WelcomeCache, type Welcome } from './welcomes.js';
import type { UpstreamTls } from './upstreamTls.js';
import { AUTH_QUERY_SERVICE, authQueryService } from './authQuery.js';
import { Headroom, HEADROOM_SERVICE, headroomService } from './headroom.js';
import { capOf } from '../budget/headroom.js';
import { userTimeoutMs } from '../io/userTimeout.js';

export type RejectedBecause = 'queue_full' | 'queue_timeout' | 'server_login' | 'internal_error';

export interface WaitHandlers {
  onAssign(conn: ServerConnection, waitedMs: number): void;
  /**
   * `error` is a whole ErrorResponse message, ready to write to the client;
   * `sqlstate` its code when pgbudget wrote it, null when it is the server's own (a login refused).
   */
  onReject(error: Buffer, reason: RejectedBecause, sqlstate: string | null): void;
}

/** What server logins need that the proxy reads from files and secrets, as of the last reload. */
export interface LoginMaterial {
  /** What the proxy knows to log in as a user (client authentication): the server login's when the service sets no password. */
  userPassword(user: string): string | ScramClientKey | undefined;
  /** TLS towards the server. */
  tls(): UpstreamTls;
}

const SWEEP_MS = 50;
/** Pool keys whose welcome (the server's ParameterStatus) is remembered. */
const MAX_WELCOMES = 10_000;
const BACKOFF_MIN_MS = 100;
const BACKOFF_MAX_MS = 5000;

export class ServerPool {
  readonly scheduler: Scheduler;
  private readonly conns = new Map<number, ServerConnection>();
  private readonly welcomes = new WelcomeCache(MAX_WELCOMES);
  private services = new Map<string, ServiceConfig>();
  /** Services removed by a reload that still have clients or connections. */
  private readonly retired = new Set<string>();
  private backoffMs = 0;
  /** Until when opening is paused by the last backoff; failures before then are of the same attempt. */
  private backoffUntil = 0;
  /** Why the upstream could not be reached, while it cannot. */
  lastUpstreamError: string | null = null;
  private lastUpstreamOkAt = 0;
  private readonly timer: NodeJS.Timeout;
  /** The database's limits and others' connections, read every headroom.intervalMs. */
  readonly headroom: Headroom;
  private gate: LeaseGate | null = null;
  /** Coordination's ceilings: per service, and of the cap. */
  private ceilings: ReadonlyMap<string, number> = new Map();
  private capCeiling: number | undefined = undefined;

  constructor(
    private config: Config,
    private readonly stats: Stats,
    private readonly log: Logger,
    private readonly material: LoginMaterial,
  ) {
    this.headroom = new Headroom(this, log, () => this.guard('headroom reading', () => this.applyCap()));
    this.scheduler = new Scheduler(this.poolLimits(config));
    this.applyConfig(config);
    this.timer = setInterval(
      () =>
        this.guard('sweep', () => {
          this.run(this.scheduler.sweep(Date.now()));
          this.retireRemoved();
          this.headroom.tick(this.config, Date.now());
        }),
      SWEEP_MS,
    );
    this.timer.unref();
    // The first reading before any client can ask: with `auto`, its waiter is first in line.
    this.headroom.tick(config, Date.now());
  }

  /** New budgets and queue settings apply at once; nothing is dropped. */
  applyConfig(config: Config): void {
    this.config = config;
    this.scheduler.setPoolLimits(this.poolLimits(config));
    const internal = [authQueryService(config), headroomService(config)].filter((s) => s !== null);
    const all = [...config.services, ...internal];
    const next = new Map(all.map((s) => [s.name, s]));
    for (const s of all) {
      this.scheduler.setService(s.name, this.serviceLimits(s));
      this.retired.delete(s.name);
    }
    // A removed service keeps its connected clients, under its last budget,
    // until they leave (matching sends nobody new to it); then its
    // connections close and it is forgotten (retireRemoved).
    for (const name of this.scheduler.serviceNames()) {
      if (!next.has(name)) {
        this.retired.add(name);
        const old = this.services.get(name);
        if (old) next.set(name, old);
      }
    }
    this.services = next;
    this.run(this.scheduler.sweep(Date.now()));
  }

  private serviceLimits(s: ServiceConfig) {
    // The reading keeps its connection when the cap falls below what clients hold: else the next
    // reading, the one that could raise the cap again, would wait for a client's transaction to end.
    const pinned = s.name === HEADROOM_SERVICE;
    return { budget: s.budget, maxWaiting: s.queue.maxWaiting, timeoutMs: s.queue.timeoutMs, enforce: s.enforce, ceiling: this.ceilings.get(s.name), pinned };
  }

  // ---- coordination ----

  /** Server connections open only with the gate's leave from now on. */
  setGate(gate: LeaseGate): void {
    this.gate = gate;
  }

  /** What coordination allows this instance now; a change applies at once (closing idle connections above it, opening for waiters below it). */
  setCeilings(services: ReadonlyMap<string, number>, cap: number | undefined): void {
    let same = cap === this.capCeiling && services.size === this.ceilings.size;
    if (same) for (const [name, n] of services) if (this.ceilings.get(name) !== n) same = false;
    if (same) return;
    this.ceilings = new Map(services);
    this.capCeiling = cap;
    for (const [name, s] of this.services) if (this.scheduler.hasService(name)) this.scheduler.setService(name, this.serviceLimits(s));
    this.applyCap();
  }

  /** This instance's own cap, of upstream.maxConnections or (auto) of the last headroom reading; before coordination's ceiling. */
  localCap(config = this.config): number {
    return capOf(config.upstream, this.headroom.reading);
  }

  localServices(): ServiceUse[] {
    const now = Date.now();
    return this.scheduler.serviceNames().map((name) => {
      const c = this.scheduler.counts(name);
      return {
        name,
        budget: c.budget,
        shared: this.isShared(name),
        held: c.held,
        closing: c.closing,
        waiting: c.waiting,
        oldestWaitMs: this.scheduler.oldestWaitMs(name, now),
      };
    });
  }

  /** Its budget is the cluster's (coordination): enforced, configured, and not one of pgbudget's own per-instance services. */
  private isShared(name: string): boolean {
    const svc = this.services.get(name);
    return svc !== undefined && svc.enforce !== false && !this.retired.has(name) && name !== AUTH_QUERY_SERVICE && name !== HEADROOM_SERVICE;
  }

  connState(connId: number) {
    return this.scheduler.connState(connId);
  }

  /**
   * Closes a server connection now whatever it does; a client using it gets
   * the server-lost error. The socket is closed by the server once its
   * backend has exited, so the slot (and a lease) is freed only then: a
   * running statement is cancelled first, so the Terminate is read at once.
   */
  shed(connId: number, reason: string): void {
    const conn = this.conns.get(connId);
    if (!conn) return;
    const state = this.scheduler.connState(connId);
    if (state === 'idle') this.run(this.scheduler.closing(connId, Date.now()));
    else if (state === 'active' && conn.processId !== 0) {
      const { host, port } = this.config.upstream;
      const nothing = () => undefined;
      sendCancel(host, port, conn.processId, conn.secretKey, { stillWanted: () => true, sending: nothing, settled: nothing, closed: nothing, failed: nothing });
    }
    conn.terminate(reason);
  }

  /** Removed services whose last client has left: their idle connections close, then they are forgotten. */
  private retireRemoved(): void {
    if (this.retired.size === 0) return;
    const now = Date.now();
    for (const name of this.retired) {
      if (this.stats.service(name).clientsConnected > 0) continue;
      const actions: Action[] = [];
      if (this.scheduler.retire(name, now, actions)) {
        this.retired.delete(name);
        this.services.delete(name);
        this.log.info({ service: name }, 'removed service has no clients left: forgotten');
      }
      this.run(actions);
    }
  }

  /** A new reading: the cap follows; a lowered one closes idle connections now and released ones until within it. */
  private applyCap(): void {
    this.scheduler.setPoolLimits(this.poolLimits(this.config));
    this.run(this.scheduler.sweep(Date.now()));
  }

  /** Backend pids of each service's server connections (logged in), for /status: which service holds which backend. */
  serverPidsByService(): Map<string, number[]> {
    const out = new Map<string, number[]>();
    for (const conn of this.conns.values()) {
      if (conn.processId === 0) continue;
      const service = conn.login.service;
      let pids = out.get(service);
      if (pids === undefined) out.set(service, (pids = []));
      pids.push(conn.processId);
    }
    for (const pids of out.values()) pids.sort((a, b) => a - b);
    return out;
  }

  /**
   * Backend pids of pgbudget's server connections (logged in), for the
   * headroom reading: this instance's, and with coordination the other
   * instances' as they last published them (counted as others, they would
   * lower the auto cap for nothing).
   */
  serverPids(): Set<number> {
    const pids = new Set(this.ownPids());
    for (const pid of this.gate?.peerPids() ?? []) pids.add(pid);
    return pids;
  }

  /** Backend pids of this instance's server connections; none without headroom readings, which alone need them. */
  *ownPids(): Iterable<number> {
    if (this.config.headroom.user === undefined) return;
    for (const conn of this.conns.values()) if (conn.processId !== 0) yield conn.processId;
  }

  private poolLimits(config: Config) {
    const cap = this.localCap(config);
    return {
      cap: this.capCeiling === undefined ? cap : Math.min(cap, this.capCeiling),
      idleTimeoutMs: config.serverIdleTimeoutMs,
      lifetimeMs: config.serverLifetimeMs,
    };
  }

  /** ParameterStatus values of the first server connection for this user and database. */
  welcome(key: string): Welcome | undefined {
    return this.welcomes.get(key);
  }

  /** The welcome of clients whose startup parameters make `welcomeKey` (the server's values, as their settings made them). */
  rememberWelcome(welcomeKey: string, params: Welcome): void {
    this.welcomes.remember(welcomeKey, params);
  }

  /**
   * Asks for a server connection; `handlers.onAssign` may run before this
   * returns. The waiter identifies a queued request (to cancel it).
   */
  acquire(service: string, key: string, handlers: WaitHandlers): Waiter | null {
    const conn = this.takeIdle(service, key);
    if (conn !== null) {
      handlers.onAssign(conn, 0);
      return null;
    }
    const request: Request = { id: 0, service, key, enqueuedAt: 0, qPrev: null, qNext: null, qList: null, handlers };
    const { waiter, actions } = this.scheduler.acquire(service, key, Date.now(), request);
    this.run(actions);
    return waiter;
  }

  /**
   * The fast path, the common case under load: an idle connection for
   * `key`, taken at once if nobody is ahead in the queue; else null. No
   * waiter, no action list, no callback.
   */
  takeIdle(service: string, key: string): ServerConnection | null {
    const idleId = this.scheduler.takeIdleNow(service, key);
    if (idleId === 0) return null;
    const conn = this.conns.get(idleId)!;
    if (conn.usable) {
      this.stats.waited(service, 0);
      return conn;
    }
    this.release(conn, false); // went bad while idle: close it; the caller takes the usual path
    return null;
  }

  /** The client left while waiting. */
  cancelWait(waiter: Waiter): void {
    if (!takeHandlers(waiter)) return;
    this.run(this.scheduler.cancel(waiter, Date.now()));
  }

  release(conn: ServerConnection, reusable: boolean): void {
    conn.owner = null;
    if (this.scheduler.connState(conn.id) !== 'active') return;
    if (conn.cancelsInFlight > 0) {
      // Not handed to anyone until the postmaster has signalled the backend (cancelQuery).
      conn.releaseAfterCancel = (conn.releaseAfterCancel ?? true) && reusable;
      return;
    }
    const ok = reusable && conn.usable;
    conn.resume();
    this.run(this.scheduler.release(conn.id, Date.now(), ok));
  }

  /**
   * Forwards a client's cancel to the server connection it holds. The
   * request goes out only if `stillWanted()` holds once the cancel socket is
   * connected, which narrows the window in which a server connection, handed
   * to another client meanwhile, could get someone else's cancel. `done`
   * runs once the cancel connection has closed (the postmaster closes it
   * after signalling the backend), failed, or timed out.
   */
  cancelQuery(conn: ServerConnection, stillWanted: () => boolean, done: () => void): void {
    const { host, port } = this.config.upstream;
    sendCancel(host, port, conn.processId, conn.secretKey, {
      stillWanted: () => {
        let wanted = false;
        this.guard('cancel request', () => {
          wanted = stillWanted();
        });
        return wanted;
      },
      // From here until the postmaster closes this socket, the server
      // connection goes to nobody else. PostgreSQL signals the backend
      // before it closes the cancel connection, and a backend that gets the
      // signal between commands drops it before it reads the next one; so
      // once the socket has closed, a late signal can only hit the
      // statement it was meant for, never the next client's.
      sending: () => conn.cancelsInFlight++,
      settled: (clean) =>
        this.guard(
          'cancel request closed',
          () => {
            conn.cancelsInFlight--;
            if (conn.cancelsInFlight > 0 || conn.releaseAfterCancel === null) return;
            const reusable = conn.releaseAfterCancel && clean;
            conn.releaseAfterCancel = null;
            // Whether the signal came is unknown after a failed cancel: never reused.
            this.release(conn, reusable);
          },
          () => conn.destroy('internal error after a cancel'),
        ),
      closed: () => this.guard('cancel request answered', done),
      failed: (message) => this.log.warn({ err: message }, 'cancel request to upstream failed'),
    });
  }

  /** Upstream reachable: a login succeeded recently, or a probe that takes no backend slot answers. */
  async upstreamReachable(): Promise<boolean> {
    if (Date.now() - this.lastUpstreamOkAt < 5000 && this.lastUpstreamError === null) return true;
    return probePostmaster(this.config.upstream.host, this.config.upstream.port);
  }

  /** Closes every idle server connection (shutdown). */
  closeIdle(): void {
    const now = Date.now();
    for (const id of this.scheduler.idleConnIds()) {
      this.run(this.scheduler.closing(id, now));
      this.conns.get(id)?.terminate('shutdown');
    }
  }

  get openConnections(): number {
    return this.conns.size;
  }

  stop(): void {
    clearInterval(this.timer);
    this.headroom.stop();
  }

  /**
   * The error boundary of the pool's own entry points (the sweep, a server
   * connection's events, promise continuations): a failure is logged with
   * its stack and the process goes on. Callers close what the failure may
   * have left in an unknown state.
   */
  private guard(where: string, fn: () => void, onFailure?: () => void): void {
    try {
      fn();
    } catch (err) {
      this.log.error({ err, where }, 'pgbudget: internal error in the server pool');
      if (onFailure) this.guard(`${where} (recovery)`, onFailure);
    }
  }

  /**
   * Carries out the scheduler's decisions, each on its own: one that fails
   * does not keep the others from running, and what it was about is given
   * back (a connection closed, a waiter ended) so no slot is lost.
   */
  private run(actions: Action[]): void {
    for (let i = 0; i < actions.length; i++) {
      try {
        this.runOne(actions[i]);
      } catch (err) {
        this.log.error({ err, action: actions[i].kind }, 'pgbudget: internal error in the server pool');
        this.guard('recovery', () => this.recover(actions[i]));
      }
    }
  }

  /** After a failed action: its connection closed, its waiter told. */
  private recover(a: Action): void {
    if (a.kind === 'assign' || a.kind === 'open' || a.kind === 'close') {
      const conn = this.conns.get(a.connId);
      if (conn) conn.destroy('internal error');
      else if (a.kind === 'open') this.run(this.scheduler.closed(a.connId, Date.now()));
    }
    if (a.kind === 'assign' || a.kind === 'reject') {
      const fields = clientErrors.internalError();
      takeHandlers(a.waiter)?.onReject(errorResponse(fields), 'internal_error', fields.code);
    }
  }

  private runOne(a: Action): void {
    switch (a.kind) {
      case 'assign': {
        const h = (a.waiter as Request).handlers ?? undefined;
        const conn = this.conns.get(a.connId)!;
        if (!conn.usable) {
          // Went bad while idle (closed, or the server spoke unprompted):
          // close it and put the waiter back at the head of its queue.
          if (h) this.scheduler.requeue(a.waiter);
          this.release(conn, false);
          break;
        }
        takeHandlers(a.waiter);
        this.stats.waited(a.waiter.service, a.waitedMs);
        if (h) h.onAssign(conn, a.waitedMs);
        else this.release(conn, true); // the waiter left in the same tick
        break;
      }
      case 'open':
        this.open(a.connId, a.service, a.key);
        break;
      case 'close':
        this.conns.get(a.connId)?.terminate(a.reason);
        break;
      case 'reject': {
        const h = takeHandlers(a.waiter);
        const facts = {
          service: a.facts.service,
          budget: a.facts.budget,
          inUse: a.facts.held,
          waiting: a.facts.waiting,
        };
        const svc = this.services.get(a.waiter.service);
        const fields: ErrorFields =
          a.reason === 'queue_full'
            ? clientErrors.queueFull(facts, svc?.queue.maxWaiting ?? 0)
            : clientErrors.queueTimeout(facts, a.waitedMs, this.lastUpstreamError ?? undefined);
        this.log.warn(
          { ...a.facts, reason: a.reason, waitedMs: a.waitedMs },
          a.reason === 'queue_full' ? 'client rejected: queue full' : 'client rejected: queue timeout',
        );
        h?.onReject(errorResponse(fields), a.reason, fields.code);
        break;
      }
  }
  }

  /** Opens a server connection, with the gate's leave when there is one. */
  private open(connId: number, service: string, key: string): void {
    const gate = this.gate;
    if (gate === null) {
      this.connect(connId, service, key);
      return;
    }
    const svc = this.services.get(service);
    const shared = this.isShared(service);
    const refused = () => {
      gate.released(connId);
      if (this.scheduler.connState(connId) !== undefined) this.run(this.scheduler.closed(connId, Date.now()));
    };
    gate.acquire(service, connId, shared, svc?.budget ?? 0).then(
      (ok) =>
        this.guard(
          'server connection lease',
          () => {
            // Closed meanwhile (shutdown, a reload): the lease goes back unused.
            if (ok && this.scheduler.connState(connId) === 'opening') this.connect(connId, service, key);
            else refused();
          },
          refused,
        ),
      () => this.guard('server connection lease', refused),
    );
  }

  private connect(connId: number, service: string, key: string): void {
    const { user, database, params } = parsePoolKey(key);
    const svc = this.services.get(service);
    const { host, port, connectTimeoutMs } = this.config.upstream;
    const conn = new ServerConnection(connId, {
      host,
      port,
      user,
      database,
      params,
      applicationName: service === AUTH_QUERY_SERVICE || service === HEADROOM_SERVICE ? service : `pgbudget:${service}`,
      service,
      connectTimeoutMs,
      keepAliveMs: this.config.tcpKeepaliveMs,
      userTimeoutMs: userTimeoutMs(this.config),
      password: () => (svc?.passwordEnv ? process.env[svc.passwordEnv] : svc?.password) ?? this.material.userPassword(user),
      tls: this.material.tls(),
    });
    this.conns.set(connId, conn);
    const stats = this.stats.service(service);
    // Out of the idle list at once, so it is never handed out; the slot is
    // freed only when onClosed runs, after a failed login is classified.
    conn.onSocketClose = () =>
      this.guard('server socket close', () => {
        if (this.scheduler.connState(connId) !== 'opening') this.run(this.scheduler.closing(connId, Date.now()));
      });
    conn.onBroken = () =>
      this.guard(
        'server error while idle',
        () => {
          this.run(this.scheduler.closing(connId, Date.now()));
          conn.terminate('server error while idle');
        },
        () => conn.destroy('server error while idle'),
      );
    // The slot comes back here, whatever else fails: the scheduler hears of the close first.
    conn.onClosed = (cause) =>
      this.guard('server connection closed', () => {
        this.conns.delete(connId);
        this.gate?.released(connId);
        this.run(this.scheduler.closed(connId, Date.now()));
        if (conn.ready || conn.processId) {
          stats.serversClosed++;
          this.log.info({ service, conn: connId, pid: conn.processId, reason: cause }, 'server connection closed');
        }
      });
    conn.open().then(
      () => this.guard('server login', () => this.opened(conn, service, key), () => conn.destroy('internal error after login')),
      (err: Error) => this.guard('server login failure', () => this.loginFailed(err, service, key)),
    );
  }

  /** A server connection has logged in: it joins the pool. */
  private opened(conn: ServerConnection, service: string, key: string): void {
    const stats = this.stats.service(service);
    const { user, database } = conn.login;
    const connId = conn.id;
    stats.serversOpened++;
    this.stats.upstreamConnected(Date.now() - conn.createdAt);
    this.backoffMs = 0;
    this.backoffUntil = 0;
    this.lastUpstreamError = null;
    this.lastUpstreamOkAt = Date.now();
    this.log.info({ service, conn: connId, pid: conn.processId, user, database }, 'server connection opened');
    // The server may have ended it in the same read as its login (a restart's
    // 57P01 after ReadyForQuery): then it is closing already, and its close frees the slot.
    if (this.scheduler.connState(connId) !== 'opening') return;
    this.run(this.scheduler.opened(connId, Date.now()));
  }

  /** A server connection could not log in: retried with backoff, or its waiters get the server's error. */
  private loginFailed(err: Error, service: string, key: string): void {
    const stats = this.stats.service(service);
    const { user, database } = parsePoolKey(key);
    stats.serverConnectErrors++;
    const loginErr = err instanceof ServerLoginError ? err : new ServerLoginError(err.message, true);
    this.stats.upstreamConnectFailed(loginErr.sqlstate);
    if (loginErr.transient) {
      // Doubled once per round of attempts, not per failed connection: a
      // dozen opens that fail together (a restart) are one failure, else the
      // backoff would reach its 5 s cap within a millisecond.
      const now = Date.now();
      if (now >= this.backoffUntil) {
        this.backoffMs = Math.min(Math.max(this.backoffMs * 2, BACKOFF_MIN_MS), BACKOFF_MAX_MS);
        this.backoffUntil = now + this.backoffMs;
        this.scheduler.pauseOpening(this.backoffUntil);
      }
      this.lastUpstreamError = loginErr.message;
      this.log.warn({ service, err: loginErr.message, retryInMs: this.backoffMs }, 'server connection failed');
    } else {
      // The server refused these credentials for good: every client waiting
      // for the same user and database gets the server's own error.
      this.log.warn({ service, user, database, err: loginErr.message }, 'server login refused');
      for (const w of this.scheduler.failWaiters(service, key)) {
        const h = takeHandlers(w);
        h?.onReject(loginErr.errorResponse!, 'server_login', loginErr.fromServer ? null : loginErr.sqlstate);
      }
    }
  }
}

/**
 * The pool's own waiter object: the scheduler links it into its queue, and
 * the pool keeps on it how to answer the client (a Map by waiter id was one
 * insert and one delete per queued transaction, and its rebuilt tables kept
 * waiters alive through scavenges).
 */
interface Request extends Waiter {
  handlers: WaitHandlers | null;
}

/** The waiter's handlers, now detached from it; undefined when it had none (already served or gone). */
function takeHandlers(w: Waiter): WaitHandlers | undefined {
  const waiter = w as Request;
  const h = waiter.handlers ?? undefined;
  waiter.handlers = null;
  return h;
}
