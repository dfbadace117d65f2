// Plain per-service counters, bumped by the core and read at scrape time.
// Nothing here allocates per message.

export type RejectReason =
  | 'no_service'
  | 'queue_full'
  | 'queue_timeout'
  | 'server_login'
  | 'protocol_violation'
  | 'startup_timeout'
  | 'shutdown';

export const REJECT_REASONS: readonly RejectReason[] = [
  'no_service',
  'queue_full',
  'queue_timeout',
  'server_login',
  'protocol_violation',
  'startup_timeout',
  'shutdown',
];

export interface ServiceStats {
  clientsConnected: number;
  /** Completed transactions (ReadyForQuery with status idle seen after a statement). */
  transactions: number;
  serverConnectErrors: number;
  serversOpened: number;
  serversClosed: number;
  rejections: Record<RejectReason, number>;
  /** Clients pinned to their server connection in transaction mode, by what kept session state. */
  pins: Record<string, number>;
}

/** The pseudo-service under which clients that match no service are counted. */
export const UNMATCHED = '(unmatched)';

export class Stats {
  private readonly byService = new Map<string, ServiceStats>();
  /** Set by the metrics layer; the core never imports it. */
  waitObserver: ((service: string, seconds: number) => void) | null = null;

  service(name: string): ServiceStats {
    let s = this.byService.get(name);
    if (!s) {
      s = {
        clientsConnected: 0,
        transactions: 0,
        serverConnectErrors: 0,
        serversOpened: 0,
        serversClosed: 0,
        rejections: Object.fromEntries(REJECT_REASONS.map((r) => [r, 0])) as Record<RejectReason, number>,
        pins: {},
      };
      this.byService.set(name, s);
    }
    return s;
  }

  entries(): IterableIterator<[string, ServiceStats]> {
    return this.byService.entries();
  }

  waited(service: string, ms: number): void {
    this.waitObserver?.(service, ms / 1000);
  }
}
