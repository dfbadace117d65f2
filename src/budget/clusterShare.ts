// How much of a budget (or of the cap) one pgbudget instance may hold when
// several share it through coordination: the room the cluster has, its fair
// share when clients wait on more than one instance, and what it keeps while
// it cannot reach the coordinator. Pure: every instance computes the same
// shares from the same view, so they agree without talking to each other.

/** One instance's use of a budget, as it published it. */
export interface InstanceDemand {
  instance: string;
  /** Server connections it holds (its leases). */
  held: number;
  /** Its clients waiting for one. */
  waiting: number;
}

/**
 * Max-min fair division of `total` among the instances by demand (held +
 * waiting): one that asks for less than an equal part gets what it asks,
 * the rest is divided equally among the others. A remainder goes one each
 * to the largest demands, ties by instance name, so every instance computes
 * the same division whatever order it lists them in.
 */
export function fairShares(total: number, demands: readonly InstanceDemand[]): Map<string, number> {
  const order = demands
    .map((d) => ({ instance: d.instance, want: Math.max(0, d.held) + Math.max(0, d.waiting) }))
    .sort((a, b) => a.want - b.want || (a.instance < b.instance ? -1 : a.instance > b.instance ? 1 : 0));
  const shares = new Map<string, number>();
  let left = Math.max(0, total);
  for (let i = 0; i < order.length; i++) {
    const rest = order.length - i;
    const equal = Math.floor(left / rest);
    if (order[i].want <= equal) {
      shares.set(order[i].instance, order[i].want);
      left -= order[i].want;
      continue;
    }
    // Everyone from here wants more than an equal part: equal parts, the
    // remainder to the largest demands (the end of the order).
    let extra = left - equal * rest;
    for (let j = order.length - 1; j >= i; j--) {
      shares.set(order[j].instance, equal + (extra > 0 ? 1 : 0));
      if (extra > 0) extra--;
    }
    return shares;
  }
  return shares;
}

/** A budget as the cluster sees it, from this instance. */
export interface ClusterView {
  /** The budget in force: the smallest any live instance's config gives. */
  budget: number;
  /** Leases held by all instances (this one's included). */
  leases: number;
  /** Leases this instance holds: its connections opened without one (Redis was down) or that lost theirs are not among them. */
  mine: number;
  /** This instance's use: every connection it holds, and its waiting clients. */
  self: InstanceDemand;
  /** The other live instances' use, as they last published it. */
  others: readonly InstanceDemand[];
}

/**
 * The most this instance may hold while it reaches the coordinator: the
 * leases it holds plus the room the cluster has; and when clients of the budget wait
 * on another instance too, no more than its fair share, so an instance
 * above its share stops reusing connections and the room flows to where
 * clients wait.
 */
export function ceilingUp(v: ClusterView): number {
  const reach = v.mine + Math.max(0, v.budget - v.leases);
  if (!v.others.some((o) => o.waiting > 0)) return reach;
  const share = fairShares(v.budget, [v.self, ...v.others]).get(v.self.instance) ?? 0;
  return Math.min(share, reach);
}

/** The static fallback's share of a budget or cap: `limit / expectedReplicas`, at least 1. */
export function staticShare(limit: number, expectedReplicas: number): number {
  return Math.max(1, Math.floor(limit / Math.max(1, expectedReplicas)));
}

export type OnRedisDown = 'static' | 'hold';

/**
 * The most this instance may hold while it cannot reach the coordinator.
 * `kept` is the most it has held since it lost touch, going down as its
 * connections close and never up (it acquires nothing new). `hold` keeps
 * that. `static` keeps no more than its static share from the start and
 * grows to it only from `growAt`: by then every other instance has lost
 * the leases it held when the coordinator went away, and has shrunk to its
 * own share, so the static shares never add up beyond the limit.
 */
export function ceilingDown(mode: OnRedisDown, kept: number, share: number, now: number, growAt: number): number {
  if (mode === 'hold') return kept;
  return now >= growAt ? share : Math.min(kept, share);
}
