// The proxy: the client listener, the sessions, the server pool, and the
// operations that touch all of them (reload, snapshot, shutdown).
import net from 'node:net';
import type { Logger } from 'pino';
import { Stats, UNMATCHED } from '../budget/stats.js';
import { ClientSession, type SessionContext } from '../client/session.js';
import { overcommitWarning, type Config } from '../config/schema.js';
import { ServerPool } from '../server/pool.js';
import { SessionRegistry } from '../client/registry.js';
import { acceptRaw, closeAccepted, type Accepted } from '../io/reads.js';

export interface ServiceSnapshot {
  name: string;
  poolMode: string;
  budget: number;
  serverConnections: { active: number; idle: number; opening: number; closing: number; total: number };
  clients: { connected: number; waiting: number };
  oldestWaitSeconds: number;
  transactions: number;
  serverConnectErrors: number;
  serversOpened: number;
  serversClosed: number;
  rejections: Record<string, number>;
  pins: Record<string, number>;
}

export interface ProxySnapshot {
  upstream: { host: string; port: number; maxConnections: number; serverConnections: number; lastError: string | null };
  services: ServiceSnapshot[];
  unmatched: { rejections: Record<string, number> };
  shuttingDown: boolean;
}

export class Proxy {
  readonly stats = new Stats();
  readonly pool: ServerPool;
  private readonly server: net.Server;
  private readonly sessions = new SessionRegistry<ClientSession>();
  private readonly ctx: SessionContext;
  private shuttingDown = false;
  private startupSweep: NodeJS.Timeout | null = null;

  constructor(
    private config: Config,
    private readonly log: Logger,
  ) {
    this.pool = new ServerPool(config, this.stats, log);
    const self = this;
    this.ctx = {
      config: () => self.config,
      pool: this.pool,
      stats: this.stats,
      log,
      sessions: this.sessions,
      get shuttingDown() {
        return self.shuttingDown;
      },
    };
    for (const s of config.services) this.stats.service(s.name);
    this.server = net.createServer();
    const warning = overcommitWarning(config);
    if (warning) log.warn(warning);
  }

  /** Starts listening; resolves with the bound address (port 0 picks a free port). */
  listen(): Promise<net.AddressInfo> {
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
        // Startup deadlines are checked here, for all clients at once (each session is its own error boundary).
        this.startupSweep = setInterval(() => {
          const now = Date.now();
          try {
            this.sessions.forEach((s) => s.checkStartupTimeout(now));
          } catch (err) {
            this.log.error({ err }, 'pgbudget: internal error in the startup sweep');
          }
        }, STARTUP_SWEEP_MS);
        this.startupSweep.unref();
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
    for (const k of restartOnly) notes.push(`${k} changed: takes effect after a restart`);
    const kept = {
      ...next,
      listen: this.config.listen,
      admin: this.config.admin,
      upstream: { ...next.upstream, host: this.config.upstream.host, port: this.config.upstream.port },
    };
    const previous = this.config;
    this.config = kept;
    try {
      for (const s of kept.services) this.stats.service(s.name);
      this.pool.applyConfig(kept);
    } catch (err) {
      // Half applied is worse than not at all: back to the running config.
      this.config = previous;
      this.pool.applyConfig(previous);
      throw new Error(`reload failed, running config kept: ${(err as Error)?.message ?? err}`);
    }
    const warning = overcommitWarning(kept);
    if (warning) notes.push(warning);
    return notes;
  }

  snapshot(): ProxySnapshot {
    const now = Date.now();
    const sched = this.pool.scheduler;
    const services: ServiceSnapshot[] = [];
    const configured = new Map(this.config.services.map((s) => [s.name, s]));
    for (const [name, st] of this.stats.entries()) {
      if (name === UNMATCHED || !sched.hasService(name)) continue;
      const c = sched.counts(name);
      services.push({
        name,
        poolMode: configured.get(name)?.poolMode ?? 'removed',
        budget: c.budget,
        serverConnections: { active: c.active, idle: c.idle, opening: c.opening, closing: c.closing, total: c.held },
        clients: { connected: st.clientsConnected, waiting: c.waiting },
        oldestWaitSeconds: sched.oldestWaitMs(name, now) / 1000,
        transactions: st.transactions,
        serverConnectErrors: st.serverConnectErrors,
        serversOpened: st.serversOpened,
        serversClosed: st.serversClosed,
        rejections: { ...st.rejections },
        pins: { ...st.pins },
      });
    }
    const { host, port, maxConnections } = this.config.upstream;
    return {
      upstream: { host, port, maxConnections, serverConnections: sched.totalHeld, lastError: this.pool.lastUpstreamError },
      services,
      unmatched: { rejections: { ...this.stats.service(UNMATCHED).rejections } },
      shuttingDown: this.shuttingDown,
    };
  }

  /**
   * Stops accepting, lets clients inside a transaction finish (up to
   * shutdownTimeoutMs), then closes everything.
   */
  async shutdown(): Promise<void> {
    if (this.shuttingDown) return;
    this.shuttingDown = true;
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const s of this.sessions.values()) s.shutdown();
    const deadline = Date.now() + this.config.shutdownTimeoutMs;
    while (this.sessions.size > 0 && Date.now() < deadline) await sleep(20);
    for (const s of this.sessions.values()) s.forceClose();
    while (this.sessions.size > 0) await sleep(10);
    // Session-mode clients leave via DISCARD ALL; let those resets finish.
    const resetDeadline = Date.now() + 2000;
    while (this.pool.scheduler.totalHeld > this.pool.scheduler.idleConnIds().length && Date.now() < resetDeadline) {
      await sleep(10);
    }
    this.pool.closeIdle();
    const closeDeadline = Date.now() + 5000;
    while (this.pool.openConnections > 0 && Date.now() < closeDeadline) await sleep(10);
    this.pool.stop();
    if (this.startupSweep) clearInterval(this.startupSweep);
    await closed;
  }
}

/** How often startup deadlines are checked: a client past its deadline is closed at most this much later. */
const STARTUP_SWEEP_MS = 100;

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
