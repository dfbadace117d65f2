// Prometheus metrics, all filled at scrape time: gauges and counters from one
// snapshot of the proxy's plain counters, the queue-wait histogram from the
// bucket counts the core keeps (see Stats.waited).
import client from 'prom-client';
import { QUEUE_WAIT_BUCKETS, REJECT_REASONS, UNMATCHED, type Stats } from '../budget/stats.js';
import type { ProxySnapshot } from '../types/snapshot.js';
import { registerDatabaseMetrics } from './database.js';

export interface MetricsSource {
  snapshot(): ProxySnapshot;
  readonly stats: Stats;
}

export class Metrics {
  readonly registry = new client.Registry();
  private snap: ProxySnapshot;

  constructor(private readonly source: MetricsSource) {
    this.snap = source.snapshot();
    const r = [this.registry];
    const self = this;
    type Svc = ProxySnapshot['services'][number];
    const gaugePerService = (name: string, help: string, value: (s: Svc) => number) =>
      new client.Gauge({
        name,
        help,
        labelNames: ['service'],
        registers: r,
        collect() {
          this.reset();
          for (const s of self.snap.services) this.set({ service: s.name }, value(s));
        },
      });
    const counterPerService = (name: string, help: string, value: (s: Svc) => number) =>
      new client.Counter({
        name,
        help,
        labelNames: ['service'],
        registers: r,
        collect() {
          this.reset();
          for (const s of self.snap.services) this.inc({ service: s.name }, value(s));
        },
      });

    new client.Gauge({
      name: 'pgbudget_server_connections',
      help: 'Server connections held by the service, by state (active = in use by a client).',
      labelNames: ['service', 'state'],
      registers: r,
      collect() {
        this.reset();
        for (const s of self.snap.services) {
          for (const state of ['active', 'idle', 'opening', 'closing'] as const) {
            this.set({ service: s.name, state }, s.serverConnections[state]);
          }
        }
      },
    });
    gaugePerService('pgbudget_service_budget_connections', 'The most server connections the service may hold.', (s) => s.budget);
    gaugePerService('pgbudget_clients_connected', 'Clients logged in through the proxy.', (s) => s.clients.connected);
    gaugePerService('pgbudget_clients_waiting', 'Clients waiting in the service queue for a server connection.', (s) => s.clients.waiting);
    gaugePerService('pgbudget_oldest_waiter_seconds', 'How long the longest-waiting client of the service has waited.', (s) => s.oldestWaitSeconds);
    counterPerService('pgbudget_transactions_total', 'Transactions (and autocommit statements) completed.', (s) => s.transactions);
    counterPerService('pgbudget_server_connect_errors_total', 'Failed attempts to open a server connection.', (s) => s.serverConnectErrors);
    counterPerService('pgbudget_server_connections_opened_total', 'Server connections opened.', (s) => s.serversOpened);
    counterPerService('pgbudget_server_connections_closed_total', 'Server connections closed.', (s) => s.serversClosed);
    counterPerService('pgbudget_query_timeouts_total', 'Statements cancelled because they ran longer than queryTimeoutMs.', (s) => s.queryTimeouts);
    new client.Counter({
      name: 'pgbudget_rejections_total',
      help: 'Clients refused or disconnected by the proxy, by reason (queue_timeout counts queue timeouts).',
      labelNames: ['service', 'reason'],
      registers: r,
      collect() {
        this.reset();
        const all = [...self.snap.services.map((s) => [s.name, s.rejections] as const), ['(unmatched)', self.snap.unmatched.rejections] as const];
        for (const [service, rejections] of all) {
          for (const reason of REJECT_REASONS) this.inc({ service, reason }, rejections[reason] ?? 0);
        }
      },
    });
    new client.Counter({
      name: 'pgbudget_pins_total',
      help: 'Transaction-mode clients pinned to their server connection because of session state, by reason.',
      labelNames: ['service', 'reason'],
      registers: r,
      collect() {
        this.reset();
        for (const s of self.snap.services) {
          for (const [reason, n] of Object.entries(s.pins)) this.inc({ service: s.name, reason }, n);
        }
      },
    });
    new client.Gauge({
      name: 'pgbudget_upstream_server_connections',
      help: 'Server connections of all services together (opening, active, idle, closing).',
      registers: r,
      collect() {
        this.set(self.snap.upstream.serverConnections);
      },
    });
    new client.Gauge({
      name: 'pgbudget_upstream_max_connections',
      help: 'The cap: the most server connections the proxy opens to the upstream.',
      registers: r,
      collect() {
        this.set(self.snap.upstream.maxConnections);
      },
    });
    new client.Gauge({
      name: 'pgbudget_upstream_up',
      help: '1 unless the last attempt to open a server connection failed.',
      registers: r,
      collect() {
        this.set(self.snap.upstream.lastError === null ? 1 : 0);
      },
    });
    this.registry.registerMetric(waitHistogram(source.stats) as unknown as client.Metric);
    registerDatabaseMetrics(this.registry, () => self.snap);
    client.collectDefaultMetrics({ register: this.registry, prefix: 'pgbudget_' });
  }

  /** The exposition text, from one fresh snapshot. */
  async render(): Promise<string> {
    this.snap = this.source.snapshot();
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}

/**
 * pgbudget_queue_wait_seconds as a registry metric whose values come from
 * the per-service bucket counts at scrape time, so a hand-out costs a few
 * additions instead of a prom-client observe() (label hashing, lookups).
 */
function waitHistogram(stats: Stats) {
  const name = 'pgbudget_queue_wait_seconds';
  const help = 'Time from asking for a server connection to getting one.';
  const get = () => {
    const values: { metricName: string; labels: Record<string, string | number>; value: number }[] = [];
    for (const [service, st] of stats.entries()) {
      if (service === UNMATCHED) continue;
      const { buckets, sumSeconds, count } = st.wait;
      let cumulative = 0;
      buckets.forEach((n, i) => {
        cumulative += n;
        const le = i < QUEUE_WAIT_BUCKETS.length ? QUEUE_WAIT_BUCKETS[i] : '+Inf';
        values.push({ metricName: `${name}_bucket`, labels: { le, service }, value: cumulative });
      });
      values.push({ metricName: `${name}_sum`, labels: { service }, value: sumSeconds });
      values.push({ metricName: `${name}_count`, labels: { service }, value: count });
    }
    return { name, help, type: 'histogram', aggregator: 'sum', values };
  };
  return { name, help, type: 'histogram', aggregator: 'sum', get };
}
