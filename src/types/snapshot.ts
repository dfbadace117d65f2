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

export interface ProxySnapshot {
  upstream: { host: string; port: number; maxConnections: number; serverConnections: number; lastError: string | null };
  services: ServiceSnapshot[];
  unmatched: { rejections: Record<string, number> };
  shuttingDown: boolean;
}
