// Surge detection for one service: is it asking for far more than it usually
// does? Pure: no timers, no sockets; the caller samples the service (once a
// second, proxy/surgeWatch.ts) and passes the time in.
//
// A service surges when either holds:
//   - demand: its clients that hold a server connection (active) plus those
//     waiting for one have been more than its budget at every sample for
//     `forMs`. Sampled, not tracked per transaction (that would be the hot
//     path): a dip shorter than the sampling interval between two samples
//     is not seen, and the onset is seen up to one interval late.
//   - connect rate: its client connection attempts over the last minute,
//     per second, are above `minRatePerSecond` and at least `factor` times
//     the rate over the 15 minutes before that minute. Needs a minute of
//     that history first, so a restart (every client reconnecting at once)
//     is not a surge.
// Hysteresis: an episode ends once neither holds (demand at or under the
// budget, the rate condition false) at every sample for `forMs`.

export interface SurgeSettings {
  /** How long demand must stay above the budget; also how long calm must last to end an episode. */
  forMs: number;
  /** The last minute's connect rate against the 15 minutes before it. */
  factor: number;
  /** The last minute's connect rate must be above this (per second). */
  minRatePerSecond: number;
}

export type SurgeCause = 'demand' | 'connect_rate';

/** What one sample sees of a service. */
export interface SurgeSample {
  /** Clients holding a server connection (active) plus clients waiting for one. */
  demand: number;
  budget: number;
  waiting: number;
  oldestWaitMs: number;
  /** Client connection attempts since the process started: a counter that only grows. */
  attempts: number;
}

export interface SurgeStart {
  kind: 'start';
  causes: SurgeCause[];
  demand: number;
  budget: number;
  waiting: number;
  oldestWaitMs: number;
  /** How long demand has been above the budget (0 when it is not). */
  demandAboveMs: number;
  ratePerSecond: number;
  /** null: not enough history for a baseline yet. */
  baselinePerSecond: number | null;
}

export interface SurgeEnd {
  kind: 'end';
  /** From the start of the episode to its end (which comes `forMs` after calm began). */
  durationMs: number;
  peakDemand: number;
  peakRatePerSecond: number;
  budget: number;
}

export type SurgeEvent = SurgeStart | SurgeEnd;

/** The last minute's rate is over this window (seconds). */
export const RATE_WINDOW_S = 60;
/** The baseline is the rate over this window before the last minute (seconds). */
export const BASELINE_WINDOW_S = 15 * 60;
/** No baseline with less history than this before the last minute (seconds). */
export const MIN_BASELINE_S = 60;

const RING = RATE_WINDOW_S + BASELINE_WINDOW_S;

/**
 * Connection attempts per second over the last 16 minutes: a ring of
 * one-second buckets (7.5 KiB), whatever the rate. Fed from a counter, so
 * the hot path only ever bumps a number.
 */
export class ConnectRate {
  private readonly ring = new Float64Array(RING);
  /** The second (since the epoch) of the newest bucket; -1 before the first record. */
  private newest = -1;
  /** The second after the first record: there is no history before it. */
  private first = 0;
  /** The counter at the last record. */
  private counted = 0;

  /**
   * The attempts counter read at `now` (ms): what it grew by since the last
   * record lands in the second of `now`. The first record only notes where
   * the counter stands. A clock that goes back puts attempts in the newest second.
   */
  record(now: number, total: number): void {
    const second = Math.floor(now / 1000);
    if (this.newest < 0) {
      // History starts with the next second: this one is seen only from now on.
      this.newest = second;
      this.first = second + 1;
      this.counted = total;
      return;
    }
    if (second > this.newest) {
      const gap = Math.min(second - this.newest, RING);
      for (let i = 1; i <= gap; i++) this.ring[(this.newest + i) % RING] = 0;
      this.newest = second;
    }
    const added = total - this.counted;
    this.counted = total;
    // A counter that went down was replaced (a service removed and added again): nothing is added.
    if (added > 0) this.ring[this.newest % RING] += added;
  }

  /** Attempts per second over the last minute (over the seconds seen, when fewer). */
  perSecond(): number {
    const span = Math.min(RATE_WINDOW_S, this.newest - this.first + 1);
    return span > 0 ? this.sum(this.newest - span + 1, this.newest) / span : 0;
  }

  /** Attempts per second over the 15 minutes before the last one (over the seconds seen); null with less than MIN_BASELINE_S of them. */
  baseline(): number | null {
    const to = this.newest - RATE_WINDOW_S;
    const from = Math.max(to - BASELINE_WINDOW_S + 1, this.first);
    const span = to - from + 1;
    if (span < MIN_BASELINE_S) return null;
    return this.sum(from, to) / span;
  }

  private sum(from: number, to: number): number {
    let n = 0;
    for (let s = from; s <= to; s++) n += this.ring[s % RING];
    return n;
  }
}

interface Episode {
  startedAt: number;
  peakDemand: number;
  peakRate: number;
  budget: number;
}

/** One service's surge state, moved on by evaluate() at each sample. */
export class SurgeDetector {
  readonly rate = new ConnectRate();
  /** Since when demand has been above the budget at every sample; -1 when it is not now. */
  private aboveSince = -1;
  /** In an episode: since when neither condition has held at every sample; -1 when one holds now. */
  private calmSince = -1;
  private episode: Episode | null = null;

  get surging(): boolean {
    return this.episode !== null;
  }

  /** When the current episode started (ms), or null. */
  get since(): number | null {
    return this.episode?.startedAt ?? null;
  }

  /** One sample at `now`: an event when an episode starts or ends, else null. */
  evaluate(now: number, sample: SurgeSample, settings: SurgeSettings): SurgeEvent | null {
    this.rate.record(now, sample.attempts);
    const over = sample.demand > sample.budget;
    if (!over) this.aboveSince = -1;
    else if (this.aboveSince < 0) this.aboveSince = now;
    const ratePerSecond = this.rate.perSecond();
    const baselinePerSecond = this.rate.baseline();
    const rateHigh = baselinePerSecond !== null && ratePerSecond > settings.minRatePerSecond && ratePerSecond >= settings.factor * baselinePerSecond;
    const demandHigh = over && now - this.aboveSince >= settings.forMs;
    const episode = this.episode;
    if (episode === null) {
      if (!demandHigh && !rateHigh) return null;
      this.episode = { startedAt: now, peakDemand: sample.demand, peakRate: ratePerSecond, budget: sample.budget };
      this.calmSince = -1;
      const causes: SurgeCause[] = [];
      if (demandHigh) causes.push('demand');
      if (rateHigh) causes.push('connect_rate');
      return {
        kind: 'start',
        causes,
        demand: sample.demand,
        budget: sample.budget,
        waiting: sample.waiting,
        oldestWaitMs: sample.oldestWaitMs,
        demandAboveMs: over ? now - this.aboveSince : 0,
        ratePerSecond,
        baselinePerSecond,
      };
    }
    episode.peakDemand = Math.max(episode.peakDemand, sample.demand);
    episode.peakRate = Math.max(episode.peakRate, ratePerSecond);
    episode.budget = sample.budget;
    if (over || rateHigh) {
      this.calmSince = -1;
      return null;
    }
    if (this.calmSince < 0) this.calmSince = now;
    if (now - this.calmSince < settings.forMs) return null;
    this.episode = null;
    this.calmSince = -1;
    return {
      kind: 'end',
      durationMs: now - episode.startedAt,
      peakDemand: episode.peakDemand,
      peakRatePerSecond: episode.peakRate,
      budget: episode.budget,
    };
  }
}
