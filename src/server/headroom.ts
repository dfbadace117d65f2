// Live headroom: every headroom.intervalMs, the database's connection limits
// and the client backends that are not pgbudget's own, read over a server
// connection of the internal service `pgbudget:headroom` (budget 1, under
// the cap, like auth.query's lookup). With upstream.maxConnections `auto`
// the cap follows the readings (budget/headroom.ts); a failed reading keeps
// the last one.
//
// Why a service of its own rather than borrowing an idle connection of a
// client's service between transactions: the reading is most needed when
// every connection is busy (a surge) or before any exists (the first auto
// cap), a borrowed connection would count as in use for a service that did
// not ask for it, and the reading role needs nothing but LOGIN (pg_monitor
// for an exact count, see HEADROOM_SQL).
import type { Logger } from 'pino';
import { capOf, type DatabaseReading } from '../budget/headroom.js';
import type { Config, ServiceConfig } from '../types/config.js';
import type { DatabaseSnapshot } from '../types/snapshot.js';
import { poolKey } from './poolKey.js';
import { internalService, ownQuery, type OwnQueryPool } from './ownQuery.js';

/** The reading's service name; no configured service may take it (config/schema.ts). */
export const HEADROOM_SERVICE = 'pgbudget:headroom';

/**
 * The settings, and the pids of the client backends that are not ours
 * (`$1`, as known when the statement is sent, and this backend). A role
 * without pg_read_all_stats sees other roles' rows with backend_type NULL:
 * those count when they are connected to a database as a role, which
 * client backends are and autovacuum and the launchers are not (parallel
 * workers, logical walsenders and replication workers would count too:
 * a lower cap, never a higher one).
 */
export const HEADROOM_SQL = `SELECT current_setting('max_connections')::int,
  current_setting('superuser_reserved_connections')::int,
  coalesce(current_setting('reserved_connections', true), '0')::int,
  (SELECT array_agg(pid) FROM pg_stat_activity
    WHERE pid <> pg_backend_pid() AND pid <> ALL ($1::int[])
      AND (backend_type = 'client backend' OR (backend_type IS NULL AND datid IS NOT NULL AND usesysid IS NOT NULL)))`;

/** The service the reading runs as, or null when headroom.user is not set. */
export function headroomService(config: Config): ServiceConfig | null {
  const h = config.headroom;
  if (h.user === undefined) return null;
  // A reading may wait for a slot as long as a login may take, and at least until the next is due.
  const timeoutMs = Math.max(h.intervalMs, config.upstream.connectTimeoutMs);
  return internalService(HEADROOM_SERVICE, h, { maxWaiting: 1, timeoutMs }, config.surge);
}

/**
 * The reading in the statement's one row. `ours` are pgbudget's server
 * pids as known when the reply came: a connection that finished its login
 * while the statement ran is not counted as another's.
 */
export function parseReading(rows: (string | null)[][], ours: ReadonlySet<number>): DatabaseReading {
  const row = rows[0];
  if (rows.length !== 1 || row.length !== 4) throw new Error(`headroom reading: expected one row of 4 columns, got ${rows.length} rows`);
  const int = (i: number, name: string) => {
    const n = Number(row[i]);
    if (row[i] === null || !Number.isInteger(n) || n < 0) throw new Error(`headroom reading: ${name} is ${JSON.stringify(row[i])}`);
    return n;
  };
  // array_agg's text form: {1,2,3}; NULL when there is none.
  const others = row[3] === null ? [] : row[3].replace(/[{}]/g, '').split(',').filter((p) => p !== '');
  return {
    maxConnections: int(0, 'max_connections'),
    superuserReservedConnections: int(1, 'superuser_reserved_connections'),
    reservedConnections: int(2, 'reserved_connections'),
    otherConnections: others.filter((p) => !ours.has(Number(p))).length,
  };
}

/** What the reading needs of the pool (server/pool.ts). */
export interface HeadroomPool extends OwnQueryPool {
  /** Backend pids of every server connection pgbudget holds (logged in). */
  serverPids(): Set<number>;
}

export class Headroom {
  /** The last reading that succeeded, and when (ms). */
  reading: DatabaseReading | null = null;
  readAt = 0;
  /** Why the last reading failed, while readings fail. */
  lastError: string | null = null;
  private inFlight = false;
  private startedAt = -Infinity;
  private stopped = false;

  constructor(
    private readonly pool: HeadroomPool,
    private readonly log: Logger,
    /** A reading succeeded (the cap may have changed). */
    private readonly onReading: () => void,
  ) {}

  /** Called by the pool's sweep: starts a reading when one is due. */
  tick(config: Config, now: number): void {
    const h = config.headroom;
    if (h.user === undefined) {
      this.reading = null;
      this.lastError = null;
      return;
    }
    if (this.stopped || this.inFlight || now - this.startedAt < h.intervalMs) return;
    this.inFlight = true;
    this.startedAt = now;
    const sent = this.pool.serverPids();
    ownQuery(this.pool, 'headroom reading', HEADROOM_SERVICE, poolKey(h.user, h.database), HEADROOM_SQL, [`{${[...sent].join(',')}}`])
      .then((rows) => {
        const ours = this.pool.serverPids();
        for (const pid of sent) ours.add(pid);
        this.read(config, parseReading(rows, ours));
      })
      .catch((err: Error) => this.failed(err.message))
      .finally(() => (this.inFlight = false));
  }

  /** No more readings (shutdown). */
  stop(): void {
    this.stopped = true;
  }

  private read(config: Config, reading: DatabaseReading): void {
    const before = capOf(config.upstream, this.reading);
    if (this.lastError !== null) this.log.info({ ...reading }, 'headroom reading succeeded again');
    this.reading = reading;
    this.readAt = Date.now();
    this.lastError = null;
    const after = capOf(config.upstream, reading);
    if (after !== before) this.log.info({ ...reading, margin: config.upstream.autoMargin, from: before, to: after }, 'upstream cap follows the database');
    this.onReading();
  }

  private failed(message: string): void {
    // Logged when readings start failing, not at every interval.
    if (this.lastError === null) this.log.warn({ err: message, keptReading: this.reading }, 'headroom reading failed; the cap stays as it is');
    else this.log.debug({ err: message }, 'headroom reading failed again');
    this.lastError = message;
  }
}

/** What /status and the metrics show of the readings; null when there are none (headroom.user not set). */
export function databaseSnapshot(config: Config, headroom: Headroom, now: number): DatabaseSnapshot | null {
  if (config.headroom.user === undefined) return null;
  const r = headroom.reading;
  return {
    reading: r && { ...r, ageSeconds: (now - headroom.readAt) / 1000 },
    lastError: headroom.lastError,
    autoCap: config.upstream.maxConnections === 'auto',
  };
}
