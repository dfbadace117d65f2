// What the proxy reports about itself at one moment: read by /status, the
// metrics and the tests, never a live object. Imports nothing.

export interface ServiceSnapshot {
  name: string;
  poolMode: string;
  budget: number;
  serverConnections: { active: number; idle: number; opening: number; closing: number; total: number };
  clients: { connected: number; waiting: number };
  oldestWaitSeconds: number;
  transactions: number;
  serverConnectErrors: number;
  serversOpened: number;
  serversClosed: number;
  queryTimeouts: number;
  rejections: Record<string, number>;
  pins: Record<string, number>;
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

export interface ProxySnapshot {
  upstream: { host: string; port: number; maxConnections: number; serverConnections: number; lastError: string | null };
  /** null: no readings (headroom.user not set). */
  database: DatabaseSnapshot | null;
  services: ServiceSnapshot[];
  unmatched: { rejections: Record<string, number> };
  shuttingDown: boolean;
}
