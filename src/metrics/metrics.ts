// Prometheus metrics, all filled at scrape time: gauges and counters from one
// snapshot of the proxy's plain counters, the histograms from the bucket
// counts the core keeps (see Stats.waited, Stats.upstreamConnected).
import client from 'prom-client';
import { CONNECT_BUCKETS, QUEUE_WAIT_BUCKETS, UNMATCHED, type Histogram, type Stats } from '../budget/stats.js';
import type { ProxySnapshot } from '../types/snapshot.js';
import { registerDatabaseMetrics } from './database.js';
import { registerCoordinationMetrics } from './coordination.js';

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
    /** Per-service counts and those of clients no service took, under service="(unmatched)". */
    const withUnmatched = () => [...self.snap.services, { name: UNMATCHED, ...self.snap.unmatched }];
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
    /** A counter by service and one more label, from each row's count per value of that label. */
    const counterPerServiceAnd = <Row extends { name: string }>(
      name: string,
      help: string,
      label: string,
      rows: () => Row[],
      counts: (row: Row) => Record<string, number>,
    ) =>
      new client.Counter({
        name,
        help,
        labelNames: ['service', label],
        registers: r,
        collect() {
          this.reset();
          for (const row of rows()) for (const [value, n] of Object.entries(counts(row))) this.inc({ service: row.name, [label]: value }, n);
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
      help: 'Server connections held by the service, by state (active = in use by a client; replication = held by a replication client for its stream).',
      labelNames: ['service', 'state'],
      registers: r,
      collect() {
        this.reset();
        for (const s of self.snap.services) {
          for (const state of ['active', 'idle', 'opening', 'closing', 'replication'] as const) {
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
    gaugePerService(
      'pgbudget_service_utilization_ratio',
      'Server connections held (opening, active, idle, closing: what counts against the budget) divided by the budget.',
      (s) => s.utilization,
    );
    counterPerService(
      'pgbudget_service_at_budget_seconds_total',
      'Time the service held its whole budget (no room to open another server connection).',
      (s) => s.atBudgetSeconds,
    );
    gaugePerService('pgbudget_service_surge', '1 while the service is surging (demand above budget, or connect rate far above its baseline).', (s) =>
      s.surge.surging ? 1 : 0,
    );
    counterPerService('pgbudget_service_surges_total', 'Surge episodes that started.', (s) => s.surge.episodes);
    gaugePerService('pgbudget_service_enforced', '1 while the budget is enforced, 0 while it is a dry run (enforce: false).', (s) => (s.enforced ? 1 : 0));
    counterPerService(
      'pgbudget_would_wait_total',
      'Dry run: clients that an enforced budget would have made wait (0 for an enforced service).',
      (s) => s.wouldWait,
    );
    counterPerServiceAnd(
      'pgbudget_would_reject_total',
      'Dry run: clients that an enforced budget would have refused, by reason (queue_full, queue_timeout).',
      'reason',
      () => self.snap.services,
      (s) => s.wouldReject,
    );
    gaugePerService(
      'pgbudget_would_be_waiting_clients',
      'Dry run: clients served beyond the budget now, that an enforced budget would have kept waiting.',
      (s) => s.wouldBeWaiting,
    );
    new client.Counter({
      name: 'pgbudget_client_connection_attempts_total',
      help: 'Client connections that reached service matching (their startup packet was read).',
      labelNames: ['service'],
      registers: r,
      collect() {
        this.reset();
        for (const s of withUnmatched()) this.inc({ service: s.name }, s.connectionAttempts);
      },
    });
    counterPerServiceAnd(
      'pgbudget_client_errors_total',
      "ErrorResponses pgbudget itself sent to clients, by SQLSTATE (the server's own errors are not counted).",
      'sqlstate',
      withUnmatched,
      (s) => s.clientErrors,
    );
    // Every reason, 0 included (Stats starts each at 0).
    counterPerServiceAnd(
      'pgbudget_rejections_total',
      'Clients refused or disconnected by the proxy, by reason (queue_timeout counts queue timeouts).',
      'reason',
      withUnmatched,
      (s) => s.rejections,
    );
    counterPerServiceAnd(
      'pgbudget_pins_total',
      'Transaction-mode clients pinned to their server connection because of session state, by reason.',
      'reason',
      () => self.snap.services,
      (s) => s.pins,
    );
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
    new client.Counter({
      name: 'pgbudget_upstream_connect_errors_total',
      help: 'Failed attempts to connect and log in to the upstream, by SQLSTATE class (08, 28, 53, 57…) or network (no SQLSTATE).',
      labelNames: ['class'],
      registers: r,
      collect() {
        this.reset();
        for (const [cls, n] of Object.entries(self.snap.upstream.connectErrors)) this.inc({ class: cls }, n);
      },
    });
    const stats = source.stats;
    this.registry.registerMetric(
      countedHistogram('pgbudget_queue_wait_seconds', 'Time from asking for a server connection to getting one.', QUEUE_WAIT_BUCKETS, function* () {
        for (const [service, st] of stats.entries()) if (service !== UNMATCHED) yield [{ service }, st.wait];
      }),
    );
    this.registry.registerMetric(
      countedHistogram(
        'pgbudget_upstream_connect_seconds',
        'Time to connect and log in to the upstream, of each server connection that logged in.',
        CONNECT_BUCKETS,
        function* () {
          yield [{}, stats.upstream.connect];
        },
      ),
    );
    registerDatabaseMetrics(this.registry, () => self.snap);
    registerCoordinationMetrics(this.registry, () => self.snap);
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

type Labels = Record<string, string>;

/**
 * A histogram as a registry metric whose values come from bucket counts
 * the core keeps (Stats), read at scrape time: an observation costs a few
 * additions instead of a prom-client observe() (label hashing, lookups).
 */
function countedHistogram(name: string, help: string, bounds: readonly number[], series: () => Iterable<[Labels, Histogram]>): client.Metric {
  const get = () => {
    const values: { metricName: string; labels: Record<string, string | number>; value: number }[] = [];
    for (const [labels, { buckets, sumSeconds, count }] of series()) {
      let cumulative = 0;
      buckets.forEach((n, i) => {
        cumulative += n;
        const le = i < bounds.length ? bounds[i] : '+Inf';
        values.push({ metricName: `${name}_bucket`, labels: { le, ...labels }, value: cumulative });
      });
      values.push({ metricName: `${name}_sum`, labels, value: sumSeconds });
      values.push({ metricName: `${name}_count`, labels, value: count });
    }
    return { name, help, type: 'histogram', aggregator: 'sum', values };
  };
  return { name, help, type: 'histogram', aggregator: 'sum', get } as unknown as client.Metric;
}
