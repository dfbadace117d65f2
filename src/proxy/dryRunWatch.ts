// Dry-run budgets, reported: once a second (with the surge tick) every
// service whose budget is a dry run is sampled, and its episodes
// (budget/dryRun.ts) become one warning at the start, naming what enforcing
// the budget would have done, and one info line at the end with the totals.
import type { Logger } from 'pino';
import type { Scheduler } from '../budget/scheduler.js';
import { DryRunEpisodes, type DryRunEnd, type DryRunStart } from '../budget/dryRun.js';

export class DryRunWatch {
  private readonly episodes = new Map<string, DryRunEpisodes>();

  constructor(
    private readonly log: Logger,
    private readonly scheduler: Scheduler,
  ) {}

  tick(now: number): void {
    for (const name of this.scheduler.serviceNames()) {
      const queue = this.scheduler.wouldBeWaiting(name, now);
      let ep = this.episodes.get(name);
      if (queue === null) {
        // Enforced (again): an episode under way ends with the dry run.
        if (ep?.active) this.log.info({ service: name }, `dry run ended: service "${name}" now enforces its budget`);
        this.episodes.delete(name);
        continue;
      }
      if (ep === undefined) this.episodes.set(name, (ep = new DryRunEpisodes()));
      const c = this.scheduler.counts(name);
      const event = ep.evaluate(now, {
        ...this.scheduler.wouldCounts(name),
        inUse: c.active,
        budget: c.budget,
        wouldBeWaiting: queue.waiting,
        oldestWouldWaitMs: queue.oldestWaitMs,
      });
      if (event?.kind === 'start') this.started(name, event);
      else if (event?.kind === 'end') this.ended(name, event);
    }
    for (const name of this.episodes.keys()) if (!this.scheduler.hasService(name)) this.episodes.delete(name);
  }

  private started(service: string, e: DryRunStart): void {
    this.log.warn(
      { service, inUse: e.inUse, budget: e.budget, wouldBeWaiting: e.wouldBeWaiting, oldestWouldWaitMs: e.oldestWouldWaitMs },
      `dry run: service "${service}" is beyond its budget, which is not enforced (enforce: false): ` +
        `${e.inUse} server connections in use against budget ${e.budget}; enforced, ${e.wouldBeWaiting} clients would be waiting ` +
        `(oldest ${e.oldestWouldWaitMs} ms)`,
    );
  }

  private ended(service: string, e: DryRunEnd): void {
    this.log.info(
      {
        service,
        durationMs: e.durationMs,
        budget: e.budget,
        wouldWait: e.wouldWait,
        wouldReject: e.wouldReject,
        peakInUse: e.peakInUse,
        peakWouldBeWaiting: e.peakWouldBeWaiting,
      },
      `dry run: service "${service}" back within its budget after ${Math.round(e.durationMs / 1000)} s; enforced, ` +
        `${e.wouldWait} clients would have waited, ${e.wouldReject.queue_full} been refused with a full queue and ` +
        `${e.wouldReject.queue_timeout} timed out; peak ${e.peakInUse} in use against budget ${e.budget}, ` +
        `${e.peakWouldBeWaiting} would have waited at once`,
    );
  }
}
