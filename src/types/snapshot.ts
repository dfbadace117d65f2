// What the proxy reports about itself at one moment: read by /status, the
// metrics and the tests, never a live object. Imports nothing.

export interface ServiceSnapshot {
  name: string;
  poolMode: string;
  budget: number;
  /** `active` in use by a client between statements or in one, `replication` held by a replication client for its stream (not in `active`). */
  serverConnections: { active: number; idle: number; opening: number; closing: number; replication: number; total: number };
  clients: { connected: number; waiting: number };
  oldestWaitSeconds: number;
  transactions: number;
  serverConnectErrors: number;
  serversOpened: number;
  serversClosed: number;
  queryTimeouts: number;
  rejections: Record<string, number>;
  pins: Record<string, number>;
  /** Server connections held (opening, active, idle and closing: what counts against the budget) / budget. */
  utilization: number;
  /** Time spent holding the whole budget (held >= budget: no room to open another), since the start. */
  atBudgetSeconds: number;
  /** Client connections that reached service matching, since the start. */
  connectionAttempts: number;
  /** Connection attempts per second over the last minute. */
  connectRatePerSecond: number;
  /** Connection attempts per second over the 15 minutes before the last one; null until a minute of it is known. */
  connectRateBaselinePerSecond: number | null;
  /** ErrorResponses pgbudget itself sent the service's clients, by SQLSTATE. */
  clientErrors: Record<string, number>;
  /** Surge detection: an episode under way and for how long; episodes since the start. */
  surge: { surging: boolean; forSeconds: number; episodes: number };
  /** Backend process ids of the server connections the service holds (logged in), ascending: pg_stat_activity's `pid`. */
  serverPids: number[];
  /** false while the budget is a dry run (enforce: false): counted, not enforced. */
  enforced: boolean;
  /** Dry run: clients that an enforced budget would have made wait, since the start. */
  wouldWait: number;
  /** Dry run: clients that an enforced budget would have refused, by reason (queue_full, queue_timeout), since the start. */
  wouldReject: Record<string, number>;
  /** Dry run: clients beyond the budget now, that an enforced budget would have queued. */
  wouldBeWaiting: number;
}

/** The database's connection limits and the connections that are not pgbudget's, as last read (headroom). */
export interface DatabaseSnapshot {
  /** The last reading that succeeded; null before the first. */
  reading: {
    maxConnections: number;
    superuserReservedConnections: number;
    /** reserved_connections (PostgreSQL 16 and later; 0 before). */
    reservedConnections: number;
    /** Client backends that are not pgbudget's own server connections. */
    otherConnections: number;
    ageSeconds: number;
  } | null;
  /** Why the last reading failed, while readings fail. */
  lastError: string | null;
  /** upstream.maxConnections is `auto`: the cap (upstream.maxConnections above) follows the readings. */
  autoCap: boolean;
}

/** A cluster's view from this instance, when budgets are shared through Redis (coordination). */
export interface CoordinationSnapshot {
  /** Leases renewed in Redis; false while it cannot be reached (the fallback applies). */
  up: boolean;
  cluster: string;
  /** This instance's name in Redis: `host/pid/random`; its leases are `<instance>#<connection id>`. */
  instance: string;
  onRedisDown: string;
  lastError: string | null;
  downForSeconds: number;
  /** The cap in force across the cluster (the least of the instances'), the leases of all services, the most this instance may hold now. */
  cap: { cap: number; clusterLeases: number; ceiling: number | null };
  services: {
    name: string;
    /** The budget in force across the cluster: the least of the live instances'. */
    clusterBudget: number;
    /** Leases of the service held by all instances. */
    clusterLeases: number;
    /** This instance's share: the leases it holds. */
    leases: number;
    /** The most this instance may hold now (its room or fair share; the fallback's while down). */
    ceiling: number | null;
    /** The other instances' use and demand, as they last published it. */
    peers: { instance: string; held: number; waiting: number; oldestWaitMs: number }[];
  }[];
  /** Redis calls made, by what for. */
  calls: { acquire: number; release: number; sync: number; nudge: number };
  counts: { syncs: number; syncFailures: number; acquired: number; refused: number; lost: number; shed: number; downs: number };
}

export interface ProxySnapshot {
  upstream: {
    host: string;
    port: number;
    maxConnections: number;
    serverConnections: number;
    lastError: string | null;
    /** Failed server connects and logins by SQLSTATE class, or `network`. */
    connectErrors: Record<string, number>;
  };
  /** null: no readings (headroom.user not set). */
  database: DatabaseSnapshot | null;
  services: ServiceSnapshot[];
  /** null: no coordination configured (each instance keeps its own budgets). */
  coordination: CoordinationSnapshot | null;
  /** Clients no service took, under the "(unmatched)" label. */
  unmatched: { rejections: Record<string, number>; connectionAttempts: number; clientErrors: Record<string, number> };
  shuttingDown: boolean;
}
