// The cluster's side of the budgets when instances share them through Redis
// (coordination): no sample at all without coordination, so a dashboard
// tells a single instance from a cluster of one.
import type client from 'prom-client';
import type { CoordinationSnapshot, ProxySnapshot } from '../types/snapshot.js';

type Sample = { labels: Record<string, string>; value: number };

/** Registers the pgbudget_coordination_* and pgbudget_cluster_* metrics, read from `snap()` at scrape time. */
export function registerCoordinationMetrics(registry: client.Registry, snap: () => ProxySnapshot): void {
  const metric = (type: 'gauge' | 'counter', name: string, help: string, samples: (c: CoordinationSnapshot) => Sample[]) => {
    const get = () => {
      const c = snap().coordination;
      return { name, help, type, aggregator: 'sum', values: c === null ? [] : samples(c) };
    };
    registry.registerMetric({ name, help, type, aggregator: 'sum', get } as unknown as client.Metric);
  };
  const perService = (name: string, help: string, value: (s: CoordinationSnapshot['services'][number]) => number | null) =>
    metric('gauge', name, help, (c) =>
      c.services.flatMap((s) => {
        const v = value(s);
        return v === null ? [] : [{ labels: { service: s.name }, value: v }];
      }),
    );
  metric('gauge', 'pgbudget_coordination_up', '1 while leases are renewed in Redis, 0 while it cannot be reached and the fallback (onRedisDown) applies.', (c) => [
    { labels: { cluster: c.cluster }, value: c.up ? 1 : 0 },
  ]);
  perService('pgbudget_cluster_budget_connections', 'The budget in force across the cluster: the least any live instance gives.', (s) => s.clusterBudget);
  perService('pgbudget_cluster_leases', 'Server connections of the service held by all instances of the cluster (leases in Redis), as of the last sync.', (s) => s.clusterLeases);
  perService('pgbudget_cluster_instance_leases', "This instance's share: the service's leases it holds.", (s) => s.leases);
  perService('pgbudget_cluster_ceiling_connections', 'The most this instance may hold of the service now: its room or fair share, or the fallback while Redis is down.', (s) => s.ceiling);
  perService('pgbudget_cluster_peer_waiting_clients', "Clients of the service waiting on the cluster's other instances, as they last published it.", (s) =>
    s.peers.reduce((n, p) => n + p.waiting, 0),
  );
  perService('pgbudget_cluster_peer_oldest_wait_seconds', "The longest wait of the service's clients on the other instances, as they last published it.", (s) =>
    s.peers.reduce((n, p) => Math.max(n, p.oldestWaitMs), 0) / 1000,
  );
  metric('gauge', 'pgbudget_cluster_cap_connections', 'The cap in force across the cluster: the least any live instance gives.', (c) => [{ labels: {}, value: c.cap.cap }]);
  metric('gauge', 'pgbudget_cluster_cap_leases', 'Server connections of all services held by all instances of the cluster.', (c) => [{ labels: {}, value: c.cap.clusterLeases }]);
  metric('counter', 'pgbudget_coordination_redis_calls_total', 'Calls to Redis, by what for: acquire and release per server connection, sync per renewal, nudge when clients start to wait.', (c) =>
    Object.entries(c.calls).map(([op, n]) => ({ labels: { op }, value: n })),
  );
  metric('counter', 'pgbudget_coordination_events_total', 'Leases acquired and refused, lost on renewal, server connections shed for coordination, and losses of Redis.', (c) => [
    { labels: { event: 'acquired' }, value: c.counts.acquired },
    { labels: { event: 'refused' }, value: c.counts.refused },
    { labels: { event: 'lost' }, value: c.counts.lost },
    { labels: { event: 'shed' }, value: c.counts.shed },
    { labels: { event: 'down' }, value: c.counts.downs },
  ]);
}
