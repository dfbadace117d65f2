// The proxy: the client listener, the sessions, the server pool, and the
// operations that touch all of them (reload, snapshot, shutdown).
import net from 'node:net';
import type { Logger } from 'pino';
import { Stats, UNMATCHED } from '../budget/stats.js';
import { ClientSession, type SessionContext, type SessionTimeouts } from './session.js';
import { configWarnings } from '../config/schema.js';
import type { Config } from '../types/config.js';
import type { ProxySnapshot, ServiceSnapshot } from '../types/snapshot.js';
import { ServerPool } from '../server/pool.js';
import { SessionRegistry } from '../client/registry.js';
import { acceptRaw, closeAccepted, type Accepted } from '../io/accept.js';
import { checkFastPath } from '../io/selfTest.js';
import { Credentials } from './credentials.js';
import { loadClientTls, type ClientTls } from './clientTls.js';
import { loadUpstreamTls, type UpstreamTls } from '../server/upstreamTls.js';
import { databaseSnapshot } from '../server/headroom.js';
import { SURGE_TICK_MS, SurgeWatch } from './surgeWatch.js';
import { DryRunWatch } from './dryRunWatch.js';
import { Coordinator } from '../coordination/coordinator.js';
import { probeUserTimeout, userTimeoutMs } from '../io/userTimeout.js';

export class Proxy {
  readonly stats = new Stats();
  readonly pool: ServerPool;
  private readonly server: net.Server;
  private readonly sessions = new SessionRegistry<ClientSession>();
  private readonly ctx: SessionContext;
  private shuttingDown = false;
  private sessionSweep: NodeJS.Timeout | null = null;
  /** Samples every service for surges (surgeWatch.ts). */
  private readonly surges: SurgeWatch;
  /** Reports dry-run budgets' episodes (dryRunWatch.ts), on the same tick. */
  private readonly dryRuns: DryRunWatch;
  private surgeTick: NodeJS.Timeout | null = null;
  /** TLS towards clients (null: off); replaced whole on reload. */
  private clientTls: ClientTls | null;
  /** What is known of clients' passwords; replaced whole on reload. */
  private credentials: Credentials;
  /** TLS towards the server; replaced whole on reload (new server connections use it). */
  private upstreamTls: UpstreamTls;
  /** Each service's timeouts; a removed service's stay for the clients it still has. */
  private readonly timeouts = new Map<string, SessionTimeouts>();
  /** Budgets and the cap shared with the cluster's other instances through Redis; null without coordination. */
  readonly coordinator: Coordinator | null;

  constructor(
    private config: Config,
    private readonly log: Logger,
  ) {
    this.clientTls = loadClientTls(config.tls);
    this.upstreamTls = loadUpstreamTls(config.upstream.tls);
    this.pool = new ServerPool(config, this.stats, log, {
      userPassword: (user) => this.credentials.serverPassword(user),
      tls: () => this.upstreamTls,
    });
    try {
      this.credentials = Credentials.load(config, null, this.pool);
    } catch (err) {
      this.pool.stop();
      throw err;
    }
    const self = this;
    this.ctx = {
      config: () => self.config,
      credentials: () => self.credentials,
      tls: () => self.clientTls,
      pool: this.pool,
      stats: this.stats,
      log,
      sessions: this.sessions,
      get shuttingDown() {
        return self.shuttingDown;
      },
      timeouts: (service) => self.timeouts.get(service) ?? NO_TIMEOUTS,
      clientsOf: (service) => self.stats.service(service).clientsConnected,
    };
    this.setTimeouts(config);
    this.coordinator = config.coordination ? new Coordinator(config.coordination, this.pool, log) : null;
    if (this.coordinator) this.pool.setGate(this.coordinator);
    this.surges = new SurgeWatch(log, this.pool.scheduler, this.stats);
    this.dryRuns = new DryRunWatch(log, this.pool.scheduler);
    for (const s of config.services) this.stats.service(s.name);
    this.server = net.createServer();
    for (const warning of configWarnings(config)) log.warn(warning);
  }

  /** Starts listening; resolves with the bound address (port 0 picks a free port). */
  async listen(): Promise<net.AddressInfo> {
    const problem = await checkFastPath();
    if (problem !== null) this.log.warn({ problem }, 'pgbudget: the fast I/O path failed its self-test; using portable I/O (net.Socket)');
    const noUserTimeout = userTimeoutMs(this.config) > 0 ? probeUserTimeout() : null;
    if (noUserTimeout !== null) {
      this.log.warn(
        { problem: noUserTimeout },
        'pgbudget: TCP_USER_TIMEOUT cannot be set here; a peer that vanishes with bytes in flight is noticed only after the kernel gives up retransmitting (tcp_retries2)',
      );
    }
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.config.listen.port, this.config.listen.host, () => {
        this.server.off('error', reject);
        // One socket per client, read without the stream machinery (io/reads.ts).
        acceptRaw(
          this.server,
          (accepted) => this.accept(accepted),
          (err) => this.log.warn({ err: err.message }, 'could not accept a client connection'),
        );
        // Startup deadlines, idle and query timeouts are checked here, for
        // all clients at once (each session is its own error boundary).
        this.sessionSweep = setInterval(() => {
          const now = Date.now();
          try {
            this.sessions.forEach((s) => s.checkTimeouts(now));
          } catch (err) {
            this.log.error({ err }, 'pgbudget: internal error in the session sweep');
          }
        }, SESSION_SWEEP_MS);
        this.sessionSweep.unref();
        // Surges: every service sampled once a second; the first sample is the start of the connect-rate history.
        const surgeTick = () => {
          try {
            const now = Date.now();
            this.surges.tick(now, this.config);
            this.dryRuns.tick(now);
          } catch (err) {
            this.log.error({ err }, 'pgbudget: internal error in the surge tick');
          }
        };
        surgeTick();
        this.surgeTick = setInterval(surgeTick, SURGE_TICK_MS);
        this.surgeTick.unref();
        resolve(this.server.address() as net.AddressInfo);
      });
    });
  }

  /** An accepted connection becomes a session; one that cannot (a bug, too many sessions) is closed, and the listener goes on. */
  private accept(accepted: Accepted): void {
    try {
      new ClientSession(accepted, this.ctx);
    } catch (err) {
      this.log.error({ err }, 'pgbudget: could not start a client session; connection closed');
      closeAccepted(accepted);
    }
  }

  /** Services in `config` get its timeouts; removed ones keep theirs. */
  private setTimeouts(config: Config): void {
    for (const s of config.services) {
      this.timeouts.set(s.name, {
        clientIdleTimeoutMs: config.clientIdleTimeoutMs,
        idleInTransactionTimeoutMs: s.idleInTransactionTimeoutMs,
        queryTimeoutMs: s.queryTimeoutMs,
      });
    }
  }

  get listening(): boolean {
    return this.server.listening;
  }

  get currentConfig(): Config {
    return this.config;
  }

  /** Applies a new, already validated config: budgets, queues, modes, matching. */
  reload(next: Config): string[] {
    const notes: string[] = [];
    const restartOnly = (['listen', 'admin'] as const).filter(
      (k) => next[k].host !== this.config[k].host || next[k].port !== this.config[k].port,
    );
    if (next.upstream.host !== this.config.upstream.host || next.upstream.port !== this.config.upstream.port) {
      restartOnly.push('upstream' as never);
    }
    if (JSON.stringify(next.coordination) !== JSON.stringify(this.config.coordination)) restartOnly.push('coordination' as never);
    for (const k of restartOnly) notes.push(`${k} changed: takes effect after a restart`);
    const kept = {
      ...next,
      coordination: this.config.coordination,
      listen: this.config.listen,
      admin: { ...next.admin, host: this.config.admin.host, port: this.config.admin.port },
      upstream: { ...next.upstream, host: this.config.upstream.host, port: this.config.upstream.port },
    };
    // Read before anything changes: a file that cannot be read keeps the running config whole.
    let credentials: Credentials;
    let clientTls: ClientTls | null;
    let upstreamTls: UpstreamTls;
    try {
      credentials = Credentials.load(kept, this.credentials, this.pool);
      clientTls = loadClientTls(kept.tls);
      upstreamTls = loadUpstreamTls(kept.upstream.tls);
    } catch (err) {
      throw new Error(`reload failed, running config kept: ${(err as Error).message}`);
    }
    const previous = this.config;
    this.config = kept;
    this.credentials = credentials;
    this.clientTls = clientTls;
    this.upstreamTls = upstreamTls;
    try {
      for (const s of kept.services) this.stats.service(s.name);
      this.pool.applyConfig(kept);
      this.setTimeouts(kept);
      this.coordinator?.reloaded();
    } catch (err) {
      // Half applied is worse than not at all: back to the running config.
      this.config = previous;
      this.pool.applyConfig(previous);
      throw new Error(`reload failed, running config kept: ${(err as Error)?.message ?? err}`);
    }
    notes.push(...configWarnings(kept));
    return notes;
  }

  snapshot(): ProxySnapshot {
    const now = Date.now();
    const sched = this.pool.scheduler;
    const services: ServiceSnapshot[] = [];
    const configured = new Map(this.config.services.map((s) => [s.name, s]));
    const pids = this.pool.serverPidsByService();
    for (const [name, st] of this.stats.entries()) {
      if (name === UNMATCHED || !sched.hasService(name)) continue;
      const c = sched.counts(name);
      const surge = this.surges.state(name, now);
      const would = sched.wouldCounts(name);
      const wouldBe = sched.wouldBeWaiting(name, now);
      services.push({
        name,
        poolMode: configured.get(name)?.poolMode ?? 'removed',
        budget: c.budget,
        serverConnections: {
          active: c.active - st.replicationConnections,
          idle: c.idle,
          opening: c.opening,
          closing: c.closing,
          replication: st.replicationConnections,
          total: c.held,
        },
        clients: { connected: st.clientsConnected, waiting: c.waiting },
        oldestWaitSeconds: sched.oldestWaitMs(name, now) / 1000,
        transactions: st.transactions,
        serverConnectErrors: st.serverConnectErrors,
        serversOpened: st.serversOpened,
        serversClosed: st.serversClosed,
        queryTimeouts: st.queryTimeouts,
        rejections: { ...st.rejections },
        pins: { ...st.pins },
        utilization: c.budget > 0 ? c.held / c.budget : 0,
        atBudgetSeconds: sched.atBudgetMs(name, now) / 1000,
        connectionAttempts: st.connectionAttempts,
        connectRatePerSecond: surge.ratePerSecond,
        connectRateBaselinePerSecond: surge.baselinePerSecond,
        clientErrors: { ...st.clientErrors },
        surge: { surging: surge.surging, forSeconds: surge.forSeconds, episodes: st.surges },
        serverPids: pids.get(name) ?? [],
        enforced: wouldBe === null,
        wouldWait: would.wouldWait,
        wouldReject: { ...would.wouldReject },
        wouldBeWaiting: wouldBe?.waiting ?? 0,
      });
    }
    const { host, port } = this.config.upstream;
    const maxConnections = this.pool.localCap();
    const unmatched = this.stats.service(UNMATCHED);
    return {
      upstream: {
        host,
        port,
        maxConnections,
        serverConnections: sched.totalHeld,
        lastError: this.pool.lastUpstreamError,
        connectErrors: { ...this.stats.upstream.connectErrors },
      },
      database: databaseSnapshot(this.config, this.pool.headroom, now),
      services,
      coordination: this.coordinator?.snapshot() ?? null,
      unmatched: {
        rejections: { ...unmatched.rejections },
        connectionAttempts: unmatched.connectionAttempts,
        clientErrors: { ...unmatched.clientErrors },
      },
      shuttingDown: this.shuttingDown,
    };
  }

  /**
   * Stops accepting, lets clients inside a transaction finish (up to
   * shutdownTimeoutMs), then closes everything. Bounded: at most
   * shutdownTimeoutMs plus SHUTDOWN_GRACE_MS for each of the closing steps,
   * whatever a peer does; what is still open then is logged and left to
   * the process exit.
   */
  async shutdown(): Promise<void> {
    if (this.shuttingDown) return;
    this.shuttingDown = true;
    // No reading opens a connection while they close.
    this.pool.headroom.stop();
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const s of this.sessions.values()) s.shutdown();
    await until(() => this.sessions.size === 0, this.config.shutdownTimeoutMs);
    for (const s of this.sessions.values()) s.forceClose();
    if (!(await until(() => this.sessions.size === 0, SHUTDOWN_GRACE_MS))) {
      this.log.error({ sessions: this.sessions.size }, 'pgbudget: client sessions still open after the shutdown grace period');
    }
    // Session-mode clients leave via DISCARD ALL; let those resets finish.
    const sched = this.pool.scheduler;
    await until(() => sched.totalHeld <= sched.idleConnIds().length, SHUTDOWN_GRACE_MS);
    this.pool.closeIdle();
    await until(() => this.pool.openConnections === 0, SHUTDOWN_GRACE_MS);
    // Every connection closed: the leases go back now rather than at their expiry.
    await this.coordinator?.stop(this.pool.openConnections === 0);
    this.pool.stop();
    if (this.sessionSweep) clearInterval(this.sessionSweep);
    if (this.surgeTick) clearInterval(this.surgeTick);
    await Promise.race([closed, new Promise((r) => setTimeout(r, SHUTDOWN_GRACE_MS).unref())]);
  }
}

/** How long each closing step of a shutdown may take after the drain (resets, closes). */
const SHUTDOWN_GRACE_MS = 3000;

/** Resolves true once `done()` holds, or false after `ms`. */
async function until(done: () => boolean, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (!done()) {
    if (Date.now() >= deadline) return false;
    await sleep(10);
  }
  return true;
}

/** How often every session's deadlines are checked: the timeouts' resolution. */
const SESSION_SWEEP_MS = 100;

const NO_TIMEOUTS: SessionTimeouts = { clientIdleTimeoutMs: 0, idleInTransactionTimeoutMs: 0, queryTimeoutMs: 0 };

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
