// Surge detection, driven: once a second every service is sampled (its
// demand, budget, queue and connection attempts) and its detector
// (budget/surge.ts) says whether an episode starts or ends; each start is
// one warning and a count, each end one info line.
import type { Logger } from 'pino';
import type { Scheduler } from '../budget/scheduler.js';
import type { Stats } from '../budget/stats.js';
import { SurgeDetector, type SurgeEnd, type SurgeStart } from '../budget/surge.js';
import type { Config, SurgeConfig } from '../types/config.js';

/** How often services are sampled: the resolution of `surge.forMs` and of the connect rate. */
export const SURGE_TICK_MS = 1000;

/** What /status and the metrics show of a service's surge state. */
export interface SurgeState {
  surging: boolean;
  /** How long the episode under way has lasted (0 when none). */
  forSeconds: number;
  ratePerSecond: number;
  baselinePerSecond: number | null;
}

const QUIET: SurgeState = { surging: false, forSeconds: 0, ratePerSecond: 0, baselinePerSecond: null };

export class SurgeWatch {
  private readonly detectors = new Map<string, SurgeDetector>();
  /** The settings each service was last configured with: a removed service keeps its own while it has clients. */
  private readonly settings = new Map<string, SurgeConfig>();

  constructor(
    private readonly log: Logger,
    private readonly scheduler: Scheduler,
    private readonly stats: Stats,
  ) {}

  /** Samples every service at `now`. */
  tick(now: number, config: Config): void {
    for (const s of config.services) this.settings.set(s.name, s.surge);
    for (const name of this.scheduler.serviceNames()) {
      let detector = this.detectors.get(name);
      if (detector === undefined) this.detectors.set(name, (detector = new SurgeDetector()));
      const c = this.scheduler.counts(name);
      const st = this.stats.service(name);
      const event = detector.evaluate(
        now,
        {
          demand: c.active + c.waiting,
          budget: c.budget,
          waiting: c.waiting,
          oldestWaitMs: this.scheduler.oldestWaitMs(name, now),
          attempts: st.connectionAttempts,
        },
        this.settings.get(name) ?? config.surge,
      );
      if (event === null) continue;
      if (event.kind === 'start') {
        st.surges++;
        this.started(name, event);
      } else this.ended(name, event);
    }
    // Services the scheduler has forgotten (removed, and their last client gone).
    for (const [name, detector] of this.detectors) {
      if (this.scheduler.hasService(name)) continue;
      this.detectors.delete(name);
      this.settings.delete(name);
      if (detector.surging) this.log.info({ service: name }, 'surge ended: service removed');
    }
  }

  state(service: string, now: number): SurgeState {
    const d = this.detectors.get(service);
    if (d === undefined) return QUIET;
    const since = d.since;
    return {
      surging: since !== null,
      forSeconds: since === null ? 0 : Math.max(0, now - since) / 1000,
      ratePerSecond: d.rate.perSecond(),
      baselinePerSecond: d.rate.baseline(),
    };
  }

  private started(service: string, e: SurgeStart): void {
    this.log.warn(
      {
        service,
        causes: e.causes,
        demand: e.demand,
        budget: e.budget,
        waiting: e.waiting,
        oldestWaitMs: e.oldestWaitMs,
        demandAboveBudgetMs: e.demandAboveMs,
        connectRatePerSecond: round(e.ratePerSecond),
        baselinePerSecond: e.baselinePerSecond === null ? null : round(e.baselinePerSecond),
      },
      `surge: service "${service}" ${e.causes.map((c) => CAUSE_WORDS[c]).join(' and ')}: ` +
        `demand ${e.demand} against budget ${e.budget}, ${e.waiting} waiting (oldest ${e.oldestWaitMs} ms), ` +
        `${round(e.ratePerSecond)} connects/s ` +
        (e.baselinePerSecond === null ? '(no baseline yet)' : `against a baseline of ${round(e.baselinePerSecond)}/s`),
    );
  }

  private ended(service: string, e: SurgeEnd): void {
    this.log.info(
      { service, durationMs: e.durationMs, peakDemand: e.peakDemand, budget: e.budget, peakConnectRatePerSecond: round(e.peakRatePerSecond) },
      `surge ended: service "${service}" after ${Math.round(e.durationMs / 1000)} s, peak demand ${e.peakDemand} against budget ${e.budget}, ` +
        `peak ${round(e.peakRatePerSecond)} connects/s`,
    );
  }
}

const CAUSE_WORDS = { demand: 'demand above budget', connect_rate: 'connect rate above baseline' } as const;

function round(n: number): number {
  return Math.round(n * 100) / 100;
}
