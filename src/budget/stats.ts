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

/** Upper bounds, in seconds, of the queue-wait histogram's buckets (+Inf is implied): 1 ms to 60 s. */
export const QUEUE_WAIT_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
const QUEUE_WAIT_BUCKETS_MS = QUEUE_WAIT_BUCKETS.map((s) => s * 1000);

/** Upper bounds, in seconds, of the upstream connect (connect plus login) histogram's buckets. */
export const CONNECT_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
const CONNECT_BUCKETS_MS = CONNECT_BUCKETS.map((s) => s * 1000);

/** Observations as plain counts, turned into a Prometheus histogram at scrape time. */
export interface Histogram {
  /** Observations per bucket, not cumulative; the last entry is +Inf. */
  readonly buckets: number[];
  sumSeconds: number;
  count: number;
}

/** Queue waits of one service. */
export type WaitHistogram = Histogram;

function histogram(bounds: readonly number[]): Histogram {
  return { buckets: new Array<number>(bounds.length + 1).fill(0), sumSeconds: 0, count: 0 };
}

/** One observation of `ms` against bounds in ms: a few additions, no allocation. */
function observe(h: Histogram, boundsMs: readonly number[], ms: number): void {
  let i = 0;
  while (i < boundsMs.length && ms > boundsMs[i]) i++;
  h.buckets[i]++;
  h.sumSeconds += ms / 1000;
  h.count++;
}

/**
 * The `class` label of a failed upstream connection: the SQLSTATE's class
 * (its first two characters, e.g. 08, 28, 53, 57) when the server answered
 * with an error, `network` when there is none (refused, reset, timed out,
 * TLS). The server's code is checked for shape, so the label set stays bounded.
 */
export function connectErrorClass(sqlstate: string | null): string {
  if (sqlstate === null) return 'network';
  return /^[0-9A-Z]{5}$/.test(sqlstate) ? sqlstate.slice(0, 2) : 'other';
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
  /** Client connections that reached service matching (their startup packet was read). */
  connectionAttempts: number;
  /**
   * ErrorResponses pgbudget itself sent the service's clients, by SQLSTATE
   * (the server's own, forwarded, are not counted). The codes come from
   * pgbudget's declarations (errors.ts), never from a client: a bounded set.
   */
  clientErrors: Record<string, number>;
  /** Surge episodes that started (budget/surge.ts). */
  surges: number;
  /** Replication connections held now: server connections a replication client has to itself (a gauge kept by the sessions). */
  replicationConnections: number;
}

/** One ErrorResponse of pgbudget's own, with SQLSTATE `sqlstate`, sent to a client counted under `st`. */
export function countClientError(st: ServiceStats, sqlstate: string): void {
  st.clientErrors[sqlstate] = (st.clientErrors[sqlstate] ?? 0) + 1;
}

/** Server connections to the upstream, of all services together. */
export interface UpstreamStats {
  /** Connect plus login time of each server connection that logged in. */
  readonly connect: Histogram;
  /** Failed connects and logins, by connectErrorClass(). */
  readonly connectErrors: Record<string, number>;
}

/** The pseudo-service under which clients that match no service are counted. */
export const UNMATCHED = '(unmatched)';

export class Stats {
  private readonly byService = new Map<string, ServiceStats>();
  readonly upstream: UpstreamStats = { connect: histogram(CONNECT_BUCKETS), connectErrors: {} };

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
        wait: histogram(QUEUE_WAIT_BUCKETS),
        connectionAttempts: 0,
        clientErrors: {},
        surges: 0,
        replicationConnections: 0,
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
    observe(this.service(service).wait, QUEUE_WAIT_BUCKETS_MS, ms);
  }

  /** A server connection logged in `ms` after it began to connect. */
  upstreamConnected(ms: number): void {
    observe(this.upstream.connect, CONNECT_BUCKETS_MS, ms);
  }

  /** A server connection failed to connect or log in; `sqlstate` is the server's error code, null when it sent none. */
  upstreamConnectFailed(sqlstate: string | null): void {
    const errors = this.upstream.connectErrors;
    const cls = connectErrorClass(sqlstate);
    errors[cls] = (errors[cls] ?? 0) + 1;
  }
}
