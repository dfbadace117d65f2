// A client's way in: the handshake packets and their deadline, a
// CancelRequest passed on to the session it names, and the service the
// startup packet belongs to. (Client authentication comes here too.) What
// it decides goes to its session (AdmissionOwner).
import type { RejectReason } from '../budget/stats.js';
import type { Config, ServiceConfig } from '../types/config.js';
import { readHandshake, type HandshakeListener } from '../client/handshake.js';
import { matchService } from '../client/match.js';
import { clientErrors } from '../errors.js';
import type { ErrorFields } from '../protocol/encode.js';
import type { Transport } from '../io/transport.js';
import { poolKey } from '../server/poolKey.js';

/** A session a CancelRequest can name. */
export interface Cancellable {
  /** `done` runs once the cancel has reached the server, or is not going to. */
  cancelRequested(secretKey: number, done: () => void): void;
}

export interface AdmissionContext {
  config(): Config;
  readonly shuttingDown: boolean;
  /** The live sessions, by the BackendKeyData process id they were given. */
  readonly sessions: { get(processId: number): Cancellable | undefined };
}

/** Who the startup packet says the client is. */
export interface Identity {
  user: string;
  database: string;
  applicationName: string;
}

export interface AdmissionOwner extends Cancellable {
  /** The client is in: its service and pool key are known; `rest` is what it pipelined after the startup packet. */
  admitted(who: Identity, service: ServiceConfig, key: string, rest: Buffer): void;
  /** No way in: FATAL with `fields`, counted as `rejection`, logged with `reason`. */
  refused(rejection: RejectReason, fields: ErrorFields, reason: string): void;
  /** A malformed packet: 08P01. */
  protocolViolation(what: string): void;
  /** The proxy is shutting down: 57P01. */
  endForShutdown(): void;
  /** The connection ends without a word: closed after a Terminate (`graceful`), else destroyed. */
  leave(reason: string, graceful: boolean): void;
}

export class Admission implements HandshakeListener {
  /** Bytes of a packet not yet whole; null once the handshake is over. */
  private held: Buffer | null = EMPTY;
  /** When startup must be complete (ms since the epoch); 0 once it is. */
  private deadline: number;
  /** This connection carried a CancelRequest: nothing after it is read. */
  private cancelling = false;

  constructor(
    private readonly ctx: AdmissionContext,
    private readonly owner: AdmissionOwner,
    private readonly socket: Transport,
    connectedAt: number,
    private readonly timeoutMs: number,
  ) {
    this.deadline = connectedAt + timeoutMs;
  }

  /** Client bytes before the session is open. */
  read(chunk: Buffer): void {
    // Nothing may follow a CancelRequest: whatever does is ignored until the connection closes.
    if (this.cancelling || this.held === null) return;
    this.held = readHandshake(this.held, chunk, this);
  }

  /** From the proxy's sweep: a client that has not finished its startup by the deadline is refused. */
  checkDeadline(now: number): void {
    if (this.deadline === 0 || now < this.deadline) return;
    this.deadline = 0;
    this.owner.refused('startup_timeout', clientErrors.startupTimeout(this.timeoutMs), 'startup timeout');
  }

  // ---- HandshakeListener ----

  answer(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  startup(params: Readonly<Record<string, string>>, rest: Buffer): void {
    this.deadline = 0;
    const who: Identity = {
      user: params.user,
      database: params.database || params.user,
      applicationName: params.application_name ?? '',
    };
    const service = matchService(this.ctx.config(), who);
    if (!service) {
      return this.owner.refused('no_service', clientErrors.noService(who.user, who.database, who.applicationName), 'no service matches');
    }
    if (this.ctx.shuttingDown) return this.owner.endForShutdown();
    // The same (shared, frozen) params object as the last login: the same key.
    if (params !== lastKeyParams) {
      lastKeyParams = params;
      lastKey = poolKey(who.user, who.database, params);
    }
    this.owner.admitted(who, service, lastKey, rest);
  }

  /**
   * PostgreSQL closes a cancel connection once it has signalled the
   * backend, and libpq's PQcancel waits for that close: so does the proxy,
   * so a cancel that arrives late can never hit the client's next
   * statement. Bounded by the upstream cancel's own timeout.
   */
  cancel(processId: number, secretKey: number): void {
    this.deadline = 0;
    this.cancelling = true;
    const target = this.ctx.sessions.get(processId);
    const close = () => this.owner.leave('cancel request', false);
    if (target && target !== this.owner) target.cancelRequested(secretKey, close);
    else close();
  }

  goodbye(): void {
    this.owner.leave('client terminated before startup', true);
  }

  violation(what: string): void {
    this.owner.protocolViolation(what);
  }
}

const EMPTY = Buffer.alloc(0);

/** The pool key of the last params object seen (startup.ts shares it between identical packets). */
let lastKeyParams: Readonly<Record<string, string>> | null = null;
let lastKey = '';
