// The cap in force: upstream.maxConnections as written, or, with `auto`,
// what the database has free for pgbudget by its last reading, less a
// margin. Pure: the reading is taken elsewhere (server/headroom.ts).

/** One reading of the database (PostgreSQL's own settings and pg_stat_activity). */
export interface DatabaseReading {
  maxConnections: number;
  superuserReservedConnections: number;
  /** reserved_connections, PostgreSQL 16 and later; 0 before. */
  reservedConnections: number;
  /** Client backends that are not pgbudget's own server connections. */
  otherConnections: number;
}

/** What the cap is made of: upstream's fields (types/config.ts UpstreamConfig). */
export interface CapSetting {
  maxConnections: number | 'auto';
  autoMargin: number;
  autoCeiling?: number;
  autoInitial: number;
}

/**
 * The auto cap never goes below this: the reading itself needs a server
 * connection under the cap, and with none the cap could never rise again.
 */
export const AUTO_CAP_FLOOR = 1;

/**
 * Slots that a role without superuser (or pg_use_reserved_connections)
 * can still log in to, pgbudget's own connections counted as free: a
 * client backend takes one of max_connections, and the reserved ones
 * refuse such roles.
 */
export function freeConnections(r: DatabaseReading): number {
  return r.maxConnections - r.superuserReservedConnections - r.reservedConnections - r.otherConnections;
}

/**
 * The cap: the configured number; with `auto`, the free slots less the
 * margin, at most autoCeiling and at least AUTO_CAP_FLOOR; before any
 * reading, autoInitial (at most autoCeiling).
 */
export function capOf(s: CapSetting, reading: DatabaseReading | null): number {
  if (s.maxConnections !== 'auto') return s.maxConnections;
  const ceiling = s.autoCeiling ?? Infinity;
  if (reading === null) return Math.min(s.autoInitial, ceiling);
  return Math.max(AUTO_CAP_FLOOR, Math.min(ceiling, freeConnections(reading) - s.autoMargin));
}
