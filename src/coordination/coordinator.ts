// One instance's part in a cluster of pgbudget instances sharing budgets and
// the cap through leases in Redis (leases.ts). It holds a lease per server
// connection, taken before the connection opens and given back when it has
// closed; renews them all in one call every leaseTtlMs / 3 (every 100 ms
// while clients wait here or elsewhere, which also publishes the demand);
// and turns what the cluster holds into ceilings for the local scheduler
// (clusterShare.ts), so the scheduler alone decides, synchronously, as
// without coordination. Redis is never on a transaction's path.
//
// Nudges: an instance whose clients start to wait publishes its name on
// the cluster's nudge channel once its demand is in Redis, and every other
// instance syncs at once. Without it, an instance holding idle connections
// and no waiters of its own would see that demand only at its next slow
// sync (leaseTtlMs / 3). A lost nudge costs only that delay.
//
// Proof: a lease is proven until the send time of the last call that
// confirmed it plus the TTL (Redis counts the TTL from when it ran the call,
// which is later). Before that, less a margin, an instance that has not
// renewed holds no more than its fallback allows, closing active
// connections if it must.
import { hostname } from 'node:os';
import type { Logger } from 'pino';
import { Redis } from 'ioredis';
import { ceilingDown, ceilingUp, staticShare, type InstanceDemand } from '../budget/clusterShare.js';
import type { CoordinationConfig } from '../types/config.js';
import type { LeaseGate, ServiceUse } from '../types/coordination.js';
import type { CoordinationSnapshot } from '../types/snapshot.js';
import { LeaseStore, type SyncResult, type SyncService } from './leases.js';

/** What the coordinator reads from and asks of the local pool. */
export interface CoordinatedPool {
  /** This instance's cap, as its config (or headroom reading) gives it. */
  localCap(): number;
  /** Every service the scheduler knows, with its local use. */
  localServices(): ServiceUse[];
  /** Ceilings for the scheduler: per service, and for the cap (undefined: none). */
  setCeilings(services: ReadonlyMap<string, number>, cap: number | undefined): void;
  /** Whether the server connection is still held and in which state. */
  connState(connId: number): 'opening' | 'active' | 'idle' | 'closing' | undefined;
  /** Closes a server connection now, whatever its state (its client, if any, gets an error). */
  shed(connId: number, reason: string): void;
  /** The backend pids of this instance's own server connections, when headroom readings need the others' (else none). */
  ownPids(): Iterable<number>;
}

interface Lease {
  service: string;
  name: string;
  /** false: opened while Redis could not be reached, or lost; the next sync takes it again if there is room. */
  leased: boolean;
}

const FAST_SYNC_MS = 100;
/** Milliseconds on a monotonic clock: a lease's proof must not move with the wall clock. */
const clock = () => performance.now();
const TICK_MS = 50;

export class Coordinator implements LeaseGate {
  private readonly redis: Redis;
  /** Subscribed to the nudge channel (a subscribed connection can do nothing else). */
  private readonly sub: Redis;
  /** Local clients waited at the last sync; and when this instance last nudged. */
  private wasWaiting = false;
  private nudgedAt = -Infinity;
  /** A nudge came while a sync was under way: another one follows it. */
  private syncAgain = false;
  private readonly store: LeaseStore;
  readonly instance: string;
  private up = false;
  /** Leases of this instance's server connections, by connection id. */
  private readonly leases = new Map<number, Lease>();
  /** Local time until which the leases held are proven (0: none proven). */
  private provenUntil = 0;
  private downSince: number;
  /** When the static fallback may grow to its share (see ceilingDown). */
  private growAt: number;
  /** While down: the most held since, per service and in all. */
  private readonly kept = new Map<string, number>();
  private keptCap = 0;
  private view: SyncResult | null = null;
  private readonly ceilings = new Map<string, number>();
  private capCeiling: number | undefined = undefined;
  private syncing = false;
  private lastSyncAt = 0;
  private readonly timer: NodeJS.Timeout;
  private stopped = false;
  private readonly startedAt = clock();
  private readonly startedIso = new Date().toISOString();
  readonly counts = { syncs: 0, syncFailures: 0, acquired: 0, refused: 0, lost: 0, shed: 0, downs: 0 };
  private lastError: string | null = null;

  constructor(
    private readonly config: CoordinationConfig,
    private readonly pool: CoordinatedPool,
    private readonly log: Logger,
    now = clock(),
  ) {
    const url = config.redis.url ?? process.env[config.redis.urlEnv ?? ''] ?? '';
    this.instance = `${hostname()}/${process.pid}/${Math.random().toString(36).slice(2, 8)}`;
    this.redis = new Redis(url, {
      lazyConnect: false,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      commandTimeout: this.commandTimeoutMs,
      connectTimeout: this.commandTimeoutMs,
      retryStrategy: () => Math.min(500, this.commandTimeoutMs),
      enableReadyCheck: false,
    });
    // Connection errors come as failed calls; the event only needs a listener so it is not thrown.
    this.redis.on('error', (err: Error) => {
      this.lastError = err.message;
    });
    // Connected (again): sync now rather than at the next retry, to rejoin soon.
    this.redis.on('ready', () => {
      if (!this.syncing && !this.stopped) void this.sync(clock());
    });
    this.store = new LeaseStore(this.redis, `${config.redis.keyPrefix}{${config.cluster}}:`, this.instance);
    this.sub = this.redis.duplicate();
    this.sub.on('error', () => undefined); // the main connection reports Redis's state
    // (Again) after each connect: ioredis resubscribes on its own too, and a second SUBSCRIBE is harmless.
    this.sub.on('ready', () => void this.sub.subscribe(this.store.nudgeChannel).catch(() => undefined));
    this.sub.on('message', (_channel: string, from: string) => {
      try {
        this.nudged(from);
      } catch (err) {
        this.log.error({ err }, 'pgbudget: internal error in coordination (nudge)');
      }
    });
    // Until the first sync: down since the start, so nothing opens unproven.
    this.downSince = now;
    this.growAt = now + config.leaseTtlMs;
    this.timer = setInterval(() => this.tick(clock()), TICK_MS);
    this.timer.unref();
    this.applyDown(now);
  }

  private get commandTimeoutMs(): number {
    return Math.max(50, Math.min(this.config.redis.commandTimeoutMs, Math.floor(this.config.leaseTtlMs / 4)));
  }

  /** Leases stop being trusted this long before they are proven to: the time to close what they cover. */
  private get marginMs(): number {
    return Math.min(1000, Math.floor(this.config.leaseTtlMs / 10));
  }

  // ---- the gate of server connections ----

  /**
   * A server connection of `service` is about to open: true when it may
   * (a lease is taken, or Redis is down and the fallback's ceilings, which
   * the scheduler already applied, allow it); false when the cluster has
   * no room, and the ceiling is lowered so the scheduler does not try again
   * before the next sync.
   */
  async acquire(service: string, connId: number, shared: boolean, budget: number): Promise<boolean> {
    const lease: Lease = { service, name: this.store.leaseName(connId), leased: false };
    // Known before it is asked for, so a sync sent meanwhile names it (a
    // lease it does not name is dropped as stale).
    this.leases.set(connId, lease);
    if (!this.up) return true;
    try {
      const r = await this.store.acquire(lease.name, service, shared ? budget : -1, this.pool.localCap(), this.config.leaseTtlMs);
      if (r.granted) {
        this.counts.acquired++;
        lease.leased = true;
        return true;
      }
      this.leases.delete(connId);
      this.counts.refused++;
      // Not before the next sync: the connection being refused is still counted as opening.
      const svc = this.pool.localServices().find((s) => s.name === service);
      if (svc && shared && r.budget >= 0 && r.serviceLeases >= r.budget) this.ceilings.set(service, Math.max(0, svc.held - 1));
      else this.capCeiling = Math.max(0, this.totalHeld() - 1);
      this.apply();
      return false;
    } catch (err) {
      this.leases.delete(connId);
      this.failed(err as Error, clock());
      return false;
    }
  }

  /** The other instances' server backend pids, as they last published them; none while down (a pid gone stale would make a headroom reading count too few others). */
  peerPids(): readonly number[] {
    return this.up ? (this.view?.peerPids ?? []) : [];
  }

  /** The server connection has closed: its lease goes back. */
  released(connId: number): void {
    const lease = this.leases.get(connId);
    if (!lease) return;
    this.leases.delete(connId);
    // A release that fails leaves the lease to expire within the TTL.
    if (lease.leased && this.up) this.store.release(lease.name, lease.service).catch(() => undefined);
  }

  // ---- the clock ----

  private tick(now: number): void {
    if (this.stopped) return;
    try {
      if (this.up && this.provenUntil > 0 && now >= this.provenUntil - this.marginMs) {
        this.failed(new Error(`no renewal confirmed for ${this.config.leaseTtlMs - this.marginMs} ms`), now);
      }
      if (this.up && this.shedAt !== 0 && now >= this.shedAt) {
        this.shedAt = 0;
        this.shedOverCeilings('lease lost: the cluster has no room for it');
      }
      if (!this.up) {
        this.applyDown(now);
        if (now >= this.provenUntil - this.marginMs) this.shedOverCeilings('coordination lost: beyond the fallback share');
      }
      const every = !this.up ? Math.min(1000, Math.floor(this.config.leaseTtlMs / 3)) : this.contended() ? FAST_SYNC_MS : Math.floor(this.config.leaseTtlMs / 3);
      if (this.syncing || now - this.lastSyncAt < every) return;
      // Not connected (at the start, or reconnecting): a call would fail at once; it counts as one once it is up or the start is over.
      if (this.redis.status !== 'ready') {
        this.lastSyncAt = now;
        if (this.up || now - this.startedAt > this.commandTimeoutMs) this.failed(new Error(`Redis connection ${this.redis.status}${this.lastError ? `: ${this.lastError}` : ''}`), now);
        return;
      }
      void this.sync(now);
    } catch (err) {
      this.log.error({ err }, 'pgbudget: internal error in coordination');
    }
  }

  /**
   * Clients wait here, or on another instance: the view must be fresh for
   * capacity to flow to them. A wait shorter than a fast sync is a
   * hand-over between transactions, not demand the cluster must see.
   */
  private contended(): boolean {
    const local = this.pool.localServices();
    if (local.some((s) => s.waiting > 0 && s.oldestWaitMs >= FAST_SYNC_MS / 2)) return true;
    if (!this.view) return false;
    for (const s of this.view.services) for (const d of s.demand) if (d.instance !== this.instance && d.waiting > 0 && d.oldestWaitMs >= FAST_SYNC_MS / 2) return true;
    return false;
  }

  /**
   * One renewal round: an entry point of its own (a timer, Redis's `ready`),
   * so nothing may escape it; a failure of Redis or of our own code alike
   * leaves the instance down until the next round succeeds.
   */
  private async sync(now: number): Promise<void> {
    this.syncing = true;
    this.lastSyncAt = now;
    try {
      await this.renew(now);
    } catch (err) {
      this.failed(err as Error, clock());
    } finally {
      this.syncing = false;
    }
    if (this.syncAgain && this.up && !this.stopped) {
      this.syncAgain = false;
      void this.sync(clock());
    }
  }

  /** Another instance's clients started to wait: sync now, so that capacity flows to them soon. */
  private nudged(from: string): void {
    if (from === this.instance || this.stopped || !this.up) return;
    if (this.syncing) this.syncAgain = true;
    else void this.sync(clock());
  }

  /**
   * After a sync (which published the demand): clients wait here since the
   * last one, so the others are nudged; again every leaseTtlMs / 3 while
   * they still wait (an instance that came meanwhile, a nudge lost).
   */
  private nudgeIfWaiting(local: readonly ServiceUse[], now: number): void {
    const waiting = local.some((s) => s.shared && s.waiting > 0 && s.oldestWaitMs >= FAST_SYNC_MS / 2);
    const due = waiting && (!this.wasWaiting || now - this.nudgedAt >= this.config.leaseTtlMs / 3);
    this.wasWaiting = waiting;
    if (!due) return;
    this.nudgedAt = now;
    this.store.nudge().catch(() => undefined);
  }

  private async renew(now: number): Promise<void> {
    const local = this.pool.localServices();
    const byService = new Map<string, string[]>();
    for (const l of this.leases.values()) {
      let list = byService.get(l.service);
      if (!list) byService.set(l.service, (list = []));
      list.push(l.name);
    }
    const services: SyncService[] = local.map((s) => ({
      name: s.name,
      budget: s.shared ? s.budget : -1,
      held: s.held,
      waiting: s.waiting,
      oldestWaitMs: s.oldestWaitMs,
      leases: byService.get(s.name) ?? [],
    }));
    // Leases of services the scheduler forgot (a connection still closing after a reload) are renewed too.
    for (const [name, leases] of byService) if (!local.some((s) => s.name === name)) services.push({ name, budget: -1, held: leases.length, waiting: 0, oldestWaitMs: 0, leases });
    const info = JSON.stringify({ host: hostname(), pid: process.pid, since: this.startedIso });
    const r = await this.store.sync(this.pool.localCap(), info, services, this.config.leaseTtlMs, this.pool.ownPids());
    if (this.stopped) return;
    this.counts.syncs++;
    this.view = r;
    const lost = new Set(r.lost);
    for (const l of this.leases.values()) l.leased = !lost.has(l.name);
    this.provenUntil = now + this.config.leaseTtlMs;
    if (!this.up) {
      // Back after an outage (or holding connections opened without
      // leases): the others may still hold connections their leases no
      // longer show until they rejoin too, so nothing grows until they
      // have, or the TTL has passed (after which one that has not is cut off).
      if (this.everUp || this.leases.size > 0) {
        this.rejoinUntil = now + this.config.leaseTtlMs;
        this.rejoinKept.clear();
        for (const s of local) this.rejoinKept.set(s.name, s.held - s.closing);
        this.rejoinKeptCap = this.totalHeld(local);
      }
      this.everUp = true;
      this.up = true;
      this.toldDown = false;
      this.log.info({ cluster: this.config.cluster, instance: this.instance, lost: lost.size }, 'coordination up: leases in Redis');
    }
    this.lastError = null;
    this.applyUp(now);
    if (lost.size > 0) {
      // Already beyond what the cluster allows (the ceilings count leases,
      // not connections): idle ones close now, ones in use at their next
      // transaction boundary, and what is left after the margin is cut.
      this.counts.lost += lost.size;
      this.shedAt = now + this.marginMs;
      this.log.warn({ cluster: this.config.cluster, lost: lost.size }, 'coordination: leases lost, the cluster has no room for them');
    }
    this.warnDisagreement(local, r);
    this.nudgeIfWaiting(local, now);
  }

  private disagreement = '';
  private everUp = false;
  /** After rejoining: until when nothing grows beyond what was held then (unless every expected instance is back). */
  private rejoinUntil = 0;
  private readonly rejoinKept = new Map<string, number>();
  private rejoinKeptCap = 0;
  /** When connections beyond the ceilings (leases lost) are cut if still there; 0: none due. */
  private shedAt = 0;
  /** The change to down has been logged (once per outage, the start included). */
  private toldDown = false;

  /** Instances whose files give different budgets: said once per change. */
  private warnDisagreement(local: ServiceUse[], r: SyncResult): void {
    const smaller: string[] = [];
    for (const s of r.services) {
      const own = local.find((l) => l.name === s.name);
      if (own?.shared && s.budget >= 0 && s.budget < own.budget) smaller.push(`${s.name} ${s.budget} (here ${own.budget})`);
    }
    if (r.cap < this.pool.localCap()) smaller.push(`cap ${r.cap} (here ${this.pool.localCap()})`);
    const text = smaller.join(', ');
    if (text === this.disagreement) return;
    this.disagreement = text;
    if (text) this.log.warn({ cluster: this.config.cluster, smaller: text }, 'instances of the cluster disagree on budgets: the smaller ones apply');
    else this.log.info({ cluster: this.config.cluster }, 'instances of the cluster agree on budgets again');
  }

  /** A call to Redis failed: the instance is down until a sync succeeds. */
  private failed(err: Error, now: number): void {
    this.counts.syncFailures++;
    this.lastError = err.message;
    if (!this.up) {
      if (!this.toldDown) this.log.warn({ cluster: this.config.cluster, err: err.message, onRedisDown: this.config.onRedisDown }, 'coordination down: Redis cannot be reached');
      this.toldDown = true;
      return;
    }
    this.toldDown = true;
    this.up = false;
    this.counts.downs++;
    this.downSince = now;
    this.growAt = now + this.config.leaseTtlMs;
    this.kept.clear();
    const local = this.pool.localServices();
    for (const s of local) this.kept.set(s.name, s.held - s.closing);
    this.keptCap = this.totalHeld(local);
    this.log.warn(
      { cluster: this.config.cluster, err: err.message, onRedisDown: this.config.onRedisDown, provenForMs: Math.max(0, this.provenUntil - now) },
      this.config.onRedisDown === 'static' ? 'coordination down: keeping to static shares' : 'coordination down: holding what is held',
    );
    this.applyDown(now);
  }

  /** Server connections held, of every service (from `local` when the caller has it). */
  private totalHeld(local: readonly ServiceUse[] = this.pool.localServices()): number {
    return local.reduce((n, s) => n + s.held, 0);
  }

  /** Ceilings from the cluster's view: its room, and fair shares where clients wait elsewhere. */
  private applyUp(now: number): void {
    const r = this.view!;
    const local = this.pool.localServices();
    if (this.rejoinUntil !== 0 && (now >= this.rejoinUntil || r.liveInstances >= this.config.expectedReplicas)) {
      this.rejoinUntil = 0;
      this.log.info({ cluster: this.config.cluster, liveInstances: r.liveInstances }, 'coordination: rejoined, budgets shared again');
    }
    const rejoining = this.rejoinUntil !== 0;
    this.ceilings.clear();
    const perInstance = new Map<string, InstanceDemand>();
    for (const s of r.services) {
      for (const d of s.demand) {
        if (d.instance === this.instance) continue;
        const total = perInstance.get(d.instance) ?? { instance: d.instance, held: 0, waiting: 0 };
        total.held += d.held;
        total.waiting += d.waiting;
        perInstance.set(d.instance, total);
      }
      const own = local.find((l) => l.name === s.name);
      if (!own?.shared || s.budget < 0) continue;
      const others = s.demand.filter((d) => d.instance !== this.instance);
      const mine = this.leasedOf(s.name);
      let ceiling = ceilingUp({ budget: s.budget, leases: s.leases, mine, self: { instance: this.instance, held: own.held, waiting: own.waiting }, others });
      if (rejoining) ceiling = Math.min(ceiling, this.keptSince(this.rejoinKept, s.name, own.held - own.closing));
      this.ceilings.set(s.name, ceiling);
    }
    const self = { instance: this.instance, held: this.totalHeld(local), waiting: local.reduce((n, s) => n + s.waiting, 0) };
    this.capCeiling = ceilingUp({ budget: r.cap, leases: r.allLeases, mine: this.leasedOf(null), self, others: [...perInstance.values()] });
    if (rejoining) this.capCeiling = Math.min(this.capCeiling, (this.rejoinKeptCap = Math.min(this.rejoinKeptCap, self.held)));
    this.apply();
  }

  /** Leases this instance holds in Redis, of one service or (null) of all. */
  private leasedOf(service: string | null): number {
    let n = 0;
    for (const l of this.leases.values()) if (l.leased && (service === null || l.service === service)) n++;
    return n;
  }

  /** What a service may keep of what it held when `kept` was taken: down as its connections close, never up. */
  private keptSince(kept: Map<string, number>, name: string, holds: number): number {
    const n = Math.min(kept.get(name) ?? 0, holds);
    kept.set(name, n);
    return n;
  }

  /** Ceilings of the fallback (see ceilingDown). */
  private applyDown(now: number): void {
    const { onRedisDown, expectedReplicas } = this.config;
    this.ceilings.clear();
    const local = this.pool.localServices();
    for (const s of local) {
      if (!s.shared) continue;
      const kept = this.keptSince(this.kept, s.name, s.held - s.closing);
      const synced = this.view?.services.find((v) => v.name === s.name)?.budget ?? -1;
      const budget = synced >= 0 ? Math.min(synced, s.budget) : s.budget;
      this.ceilings.set(s.name, ceilingDown(onRedisDown, kept, staticShare(budget, expectedReplicas), now, this.growAt));
    }
    this.keptCap = Math.min(this.keptCap, this.totalHeld(local));
    const cap = Math.min(this.pool.localCap(), this.view?.cap ?? Infinity);
    this.capCeiling = ceilingDown(onRedisDown, this.keptCap, staticShare(cap, expectedReplicas), now, this.growAt);
    this.apply();
  }

  private apply(): void {
    this.pool.setCeilings(this.ceilings, this.capCeiling);
  }

  /** The proof has run out: connections beyond the ceilings close now, active ones too. */
  private shedOverCeilings(reason: string): void {
    const local = new Map(this.pool.localServices().map((s) => [s.name, s]));
    const over = new Map<string, number>();
    for (const [name, ceiling] of this.ceilings) {
      const s = local.get(name);
      if (s && s.held - s.closing > ceiling) over.set(name, s.held - s.closing - ceiling);
    }
    let overCap = this.capCeiling === undefined ? 0 : this.totalHeld([...local.values()]) - [...local.values()].reduce((n, s) => n + s.closing, 0) - this.capCeiling;
    if (over.size === 0 && overCap <= 0) return;
    // Those without a lease first, then the newest: the others may have the room for them.
    const ids = [...this.leases.keys()].sort((a, b) => Number(this.leases.get(a)!.leased) - Number(this.leases.get(b)!.leased) || b - a);
    for (const id of ids) {
      const l = this.leases.get(id)!;
      const state = this.pool.connState(id);
      if (state === undefined || state === 'closing') continue;
      const n = over.get(l.service) ?? 0;
      if (n <= 0 && overCap <= 0) continue;
      if (n > 0) over.set(l.service, n - 1);
      overCap--;
      this.shedOne(id, reason);
    }
  }

  private shedOne(connId: number, reason: string): void {
    const state = this.pool.connState(connId);
    if (state === undefined || state === 'closing') return;
    this.counts.shed++;
    this.log.warn({ conn: connId, service: this.leases.get(connId)?.service, state, reason }, 'server connection closed for coordination');
    this.pool.shed(connId, reason);
  }

  snapshot(): CoordinationSnapshot {
    const local = this.pool.localServices();
    const mine = new Map<string, number>();
    for (const l of this.leases.values()) if (l.leased) mine.set(l.service, (mine.get(l.service) ?? 0) + 1);
    return {
      up: this.up,
      cluster: this.config.cluster,
      instance: this.instance,
      onRedisDown: this.config.onRedisDown,
      lastError: this.up ? null : this.lastError,
      downForSeconds: this.up ? 0 : (clock() - this.downSince) / 1000,
      cap: { cap: this.view?.cap ?? this.pool.localCap(), clusterLeases: this.view?.allLeases ?? 0, ceiling: this.capCeiling ?? null },
      services: local
        .filter((s) => s.shared)
        .map((s) => {
          const v = this.view?.services.find((x) => x.name === s.name);
          return {
            name: s.name,
            clusterBudget: v && v.budget >= 0 ? v.budget : s.budget,
            clusterLeases: v?.leases ?? 0,
            leases: mine.get(s.name) ?? 0,
            ceiling: this.ceilings.get(s.name) ?? null,
            peers: (v?.demand ?? []).filter((d) => d.instance !== this.instance),
          };
        }),
      calls: { ...this.store.calls },
      counts: { ...this.counts },
    };
  }

  /** The config was reloaded: publish its budgets now rather than at the next renewal. */
  reloaded(): void {
    if (this.up && !this.syncing && !this.stopped) void this.sync(clock());
  }

  /** Stops renewing; with `leave`, gives every lease back at once (the connections have closed). */
  async stop(leave: boolean): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    if (leave && this.up) {
      await this.store.leave(this.pool.localServices().map((s) => s.name)).catch(() => undefined);
    }
    this.redis.disconnect();
    this.sub.disconnect();
  }
}
