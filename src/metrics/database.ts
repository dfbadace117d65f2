// The database's side of the cap (the headroom readings, server/headroom.ts):
// gauges with no sample until a reading has succeeded, and none at all
// without readings, since a 0 would read as a database with no room.
import type client from 'prom-client';
import type { ProxySnapshot } from '../types/snapshot.js';

type Reading = NonNullable<NonNullable<ProxySnapshot['database']>['reading']>;

/** Registers the pgbudget_database_* gauges, read from `snap()` at scrape time. */
export function registerDatabaseMetrics(registry: client.Registry, snap: () => ProxySnapshot): void {
  const gauge = (name: string, help: string, value: (d: NonNullable<ProxySnapshot['database']>) => number | null) => {
    const get = () => {
      const d = snap().database;
      const v = d === null ? null : value(d);
      return { name, help, type: 'gauge', aggregator: 'sum', values: v === null ? [] : [{ labels: {}, value: v }] };
    };
    registry.registerMetric({ name, help, type: 'gauge', aggregator: 'sum', get } as unknown as client.Metric);
  };
  const read = (f: (r: Reading) => number) => (d: NonNullable<ProxySnapshot['database']>) => (d.reading === null ? null : f(d.reading));
  gauge('pgbudget_database_max_connections', "The database's max_connections, as last read.", read((r) => r.maxConnections));
  gauge(
    'pgbudget_database_reserved_connections',
    "Of those, the slots only superusers (superuser_reserved_connections) or roles granted them (reserved_connections) may take, as last read.",
    read((r) => r.superuserReservedConnections + r.reservedConnections),
  );
  gauge('pgbudget_database_other_connections', "Client connections to the database that are not pgbudget's own, as last read.", read((r) => r.otherConnections));
  gauge('pgbudget_database_up', '1 when the last headroom reading succeeded, 0 while readings fail or before the first.', (d) =>
    d.lastError === null && d.reading !== null ? 1 : 0,
  );
}
