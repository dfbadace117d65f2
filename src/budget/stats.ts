// Plain per-service counters, bumped by the core and read at scrape time.
// Nothing here allocates per message.

export type RejectReason =
  | 'no_service'
  | 'too_many_clients'
  | 'tls_required'
  | 'queue_full'
  | 'queue_timeout'
  | 'server_login'
  | 'protocol_violation'
  | 'startup_timeout'
  | 'auth_failed'
  | 'auth_timeout'
  | 'shutdown'
  | 'client_idle_timeout'
  | 'idle_in_transaction_timeout'
  | 'internal_error';

export const REJECT_REASONS: readonly RejectReason[] = [
  'no_service',
  'too_many_clients',
  'tls_required',
  'queue_full',
  'queue_timeout',
  'server_login',
  'protocol_violation',
  'startup_timeout',
  'auth_failed',
  'auth_timeout',
  'shutdown',
  'client_idle_timeout',
  'idle_in_transaction_timeout',
  'internal_error',
];

/** Upper bounds, in seconds, of the queue-wait histogram's buckets (+Inf is implied). */
export const QUEUE_WAIT_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
const QUEUE_WAIT_BUCKETS_MS = QUEUE_WAIT_BUCKETS.map((s) => s * 1000);

/** Queue waits of one service as plain counts, turned into a Prometheus histogram at scrape time. */
export interface WaitHistogram {
  /** Hand-outs per bucket, not cumulative; the last entry is +Inf. */
  readonly buckets: number[];
  sumSeconds: number;
  count: number;
}

export interface ServiceStats {
  clientsConnected: number;
  /** Completed transactions (ReadyForQuery with status idle seen after a statement). */
  transactions: number;
  serverConnectErrors: number;
  serversOpened: number;
  serversClosed: number;
  /** Statements cancelled by queryTimeoutMs. */
  queryTimeouts: number;
  rejections: Record<RejectReason, number>;
  /** Clients pinned to their server connection in transaction mode, by what kept session state. */
  pins: Record<string, number>;
  /** How long each server connection hand-out waited (0 when immediate). */
  wait: WaitHistogram;
}

/** The pseudo-service under which clients that match no service are counted. */
export const UNMATCHED = '(unmatched)';

export class Stats {
  private readonly byService = new Map<string, ServiceStats>();

  service(name: string): ServiceStats {
    let s = this.byService.get(name);
    if (!s) {
      s = {
        clientsConnected: 0,
        transactions: 0,
        serverConnectErrors: 0,
        serversOpened: 0,
        serversClosed: 0,
        queryTimeouts: 0,
        rejections: Object.fromEntries(REJECT_REASONS.map((r) => [r, 0])) as Record<RejectReason, number>,
        pins: {},
        wait: { buckets: new Array<number>(QUEUE_WAIT_BUCKETS.length + 1).fill(0), sumSeconds: 0, count: 0 },
      };
      this.byService.set(name, s);
    }
    return s;
  }

  entries(): IterableIterator<[string, ServiceStats]> {
    return this.byService.entries();
  }

  /** One hand-out of a server connection after `ms` in the queue: a few additions, no allocation. */
  waited(service: string, ms: number): void {
    const w = this.service(service).wait;
    let i = 0;
    while (i < QUEUE_WAIT_BUCKETS_MS.length && ms > QUEUE_WAIT_BUCKETS_MS[i]) i++;
    w.buckets[i]++;
    w.sumSeconds += ms / 1000;
    w.count++;
  }
}
