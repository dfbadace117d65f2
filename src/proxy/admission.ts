// A client's way in: the handshake packets and their deadline, a
// CancelRequest passed on to the session it names, the service the startup
// packet belongs to, and the client's authentication. What it decides goes
// to its session (AdmissionOwner).
import type { Logger } from 'pino';
import { UNMATCHED, type RejectReason, type Stats } from '../budget/stats.js';
import { Authentication, type KnownSecret, type PasswordMethod } from '../client/authenticate.js';
import type { Config, ServiceConfig } from '../types/config.js';
import { readHandshake, type HandshakeListener } from '../client/handshake.js';
import { matchService } from '../client/match.js';
import { clientErrors } from '../errors.js';
import { ALPN_POSTGRESQL } from '../protocol/codes.js';
import type { ErrorFields } from '../protocol/encode.js';
import type { Transport } from '../io/transport.js';
import type { PeerCertificate } from '../io/tls.js';
import { isReplication, poolKey, welcomeKey } from '../server/poolKey.js';
import { clientSettings, type Settings } from '../server/settings.js';
import type { Credentials } from './credentials.js';
import type { ClientTls } from './clientTls.js';

/** A session a CancelRequest can name. */
export interface Cancellable {
  /** `done` runs once the cancel has reached the server, or is not going to. */
  cancelRequested(secretKey: number, done: () => void): void;
}

export interface AdmissionContext {
  config(): Config;
  /** What is known of clients' passwords (auth.users, auth.file), as of the last reload. */
  credentials(): Credentials;
  readonly log: Logger;
  readonly shuttingDown: boolean;
  /** TLS towards clients, when configured (tls.mode is not disable). */
  tls(): ClientTls | null;
  /** The live sessions, by the BackendKeyData process id they were given; `size` counts them all. */
  readonly sessions: { get(processId: number): Cancellable | undefined; readonly size: number };
  /** Clients of a service that are in (admitted, not yet gone). */
  clientsOf(service: string): number;
  readonly stats: Stats;
}

/** Who the startup packet says the client is. */
export interface Identity {
  user: string;
  database: string;
  applicationName: string;
  /** A replication connection (startup `replication` true or database): its own server connection, passed through. */
  replication: boolean;
}

export interface AdmissionOwner extends Cancellable {
  /**
   * The client asked for TLS and got 'S', or started it directly (`hello`:
   * the bytes of its TLS handshake read so far): its connection becomes a
   * TLS one (the owner's socket changes).
   */
  startTls(tls: ClientTls, hello: Buffer | null): void;
  /** The client is in: its service and pool key are known; `rest` is what it pipelined after the startup packet. */
  admitted(who: Identity, service: ServiceConfig, login: LoginKeys, rest: Buffer): void;
  /** No way in: FATAL with `fields`, counted as `rejection` (under `service` once it is known), logged with `reason`. */
  refused(rejection: RejectReason, fields: ErrorFields, reason: string, service?: string): void;
  /** A malformed packet: 08P01. */
  protocolViolation(what: string): void;
  /** No way in and not a word said (PostgreSQL refuses direct TLS so): counted as `rejection`, closed. */
  dropped(rejection: RejectReason, reason: string): void;
  /** The proxy is shutting down: 57P01. */
  endForShutdown(): void;
  /** The connection ends without a word: closed after a Terminate (`graceful`), else destroyed. */
  leave(reason: string, graceful: boolean): void;
  /** An internal error while admitting this client: XX000, this client alone. */
  failed(err: unknown, where: string): void;
  /** The client is gone (or has been ended): a late answer (a lookup) is dropped. */
  readonly ended: boolean;
}

/** Where a client's server connections come from, and what is applied to them. */
export interface LoginKeys {
  /** The pool key: user, database and the startup parameters a connection must log in with. */
  readonly key: string;
  /** The key of its welcome: every startup parameter (the server's reported values depend on them). */
  readonly welcomeKey: string;
  /** The startup parameters applied per checkout (server/settings.ts); null: none (a replication connection logs in with all). */
  readonly settings: Settings | null;
}

/** A password exchange, from the moment its method is known; `exchange` is null while the password is looked up. */
interface PendingAuth {
  exchange: Authentication | null;
  method: PasswordMethod;
  who: Identity;
  service: ServiceConfig;
  login: LoginKeys;
  timeoutMs: number;
}

export class Admission implements HandshakeListener {
  /** Bytes of a packet not yet whole; null once the handshake is over. */
  private held: Buffer | null = EMPTY;
  /** When startup must be complete (ms since the epoch); 0 once it is. */
  private deadline: number;
  /** This connection carried a CancelRequest: nothing after it is read. */
  private cancelling = false;
  /** The connection is TLS (an SSLRequest was answered 'S', or direct TLS). */
  private secure = false;
  /** Nothing has been taken from the connection yet (direct TLS is recognised only then). */
  private untouched = true;
  /** Direct TLS: without ALPN "postgresql" the client is refused once the TLS handshake is done. */
  private direct = false;
  /** The CN of the client certificate the TLS handshake verified, if any (the cert method). */
  private peerCommonName: string | null = null;
  /** tls-server-end-point data of the certificate presented on this connection: SCRAM-SHA-256-PLUS is offered. */
  private channelBinding: Buffer | null = null;
  /** The password exchange under way (or its lookup), and who it admits when it succeeds. */
  private auth: PendingAuth | null = null;

  constructor(
    private readonly ctx: AdmissionContext,
    private readonly owner: AdmissionOwner,
    /** The client's connection; a TLS one once TLS has started. */
    public socket: Transport,
    connectedAt: number,
    private readonly timeoutMs: number,
  ) {
    this.deadline = connectedAt + timeoutMs;
  }

  /** Client bytes before the session is open. */
  read(chunk: Buffer): void {
    // Nothing may follow a CancelRequest: whatever does is ignored until the connection closes.
    if (this.cancelling || this.held === null) return;
    if (this.auth !== null) return this.readAuth(chunk);
    const held = readHandshake(this.held, chunk, this);
    // The startup packet may have opened an authentication exchange, which keeps its own bytes.
    if (this.auth === null) this.held = held;
  }

  /** From the proxy's sweep: a client that has not finished its startup (or its authentication) by the deadline is refused. */
  checkDeadline(now: number): void {
    if (this.deadline === 0 || now < this.deadline) return;
    this.deadline = 0;
    const auth = this.auth;
    if (auth === null) return this.owner.refused('startup_timeout', clientErrors.startupTimeout(this.timeoutMs), 'startup timeout');
    this.endAuth();
    this.owner.refused('auth_timeout', clientErrors.authTimeout(auth.timeoutMs), 'authentication timeout', auth.service.name);
  }

  /**
   * The TLS handshake is done: direct TLS without ALPN "postgresql" ends the
   * client, as PostgreSQL ends it (a mismatched ALPN failed the handshake
   * already); under verify-client, so does a certificate that does not chain to the CA.
   */
  secured(peer: PeerCertificate, alpn: string | null): void {
    if (this.direct && alpn !== ALPN_POSTGRESQL) {
      this.deadline = 0;
      this.held = null;
      return this.drop('direct TLS without ALPN "postgresql"', 'info');
    }
    if (peer.verified) this.peerCommonName = peer.commonName;
    else if (this.ctx.tls()?.verifyClient) {
      this.deadline = 0;
      this.held = null;
      this.owner.refused('auth_failed', clientErrors.clientCertificateRejected(peer.reason), `client certificate rejected: ${peer.reason}`);
    }
  }

  // ---- HandshakeListener ----

  get tlsOffered(): boolean {
    return !this.secure && this.ctx.tls() !== null;
  }

  get fresh(): boolean {
    return this.untouched;
  }

  startTls(): void {
    this.socket.write(TLS_ACCEPTED);
    this.beginTls(null);
  }

  startDirectTls(hello: Buffer): void {
    this.direct = true;
    this.beginTls(hello);
  }

  refuseDirectTls(): void {
    this.deadline = 0;
    // At debug only, as PostgreSQL logs it only when asked: scanners send TLS hellos to any port.
    this.drop('direct TLS, but TLS is not configured', 'debug');
  }

  private beginTls(hello: Buffer | null): void {
    const tls = this.ctx.tls()!;
    this.secure = true;
    this.untouched = false;
    this.channelBinding = tls.channelBinding;
    this.owner.startTls(tls, hello);
  }

  private drop(reason: string, level: 'info' | 'debug'): void {
    if (this.ctx.log.isLevelEnabled(level)) this.ctx.log[level]({ reason }, 'client refused');
    this.owner.dropped('protocol_violation', reason);
  }

  answer(bytes: Buffer): void {
    this.untouched = false;
    this.socket.write(bytes);
  }

  startup(params: Readonly<Record<string, string>>, rest: Buffer): void {
    this.deadline = 0;
    const who: Identity = {
      user: params.user,
      database: params.database || params.user,
      applicationName: params.application_name ?? '',
      replication: isReplication(params),
    };
    const config = this.ctx.config();
    const service = matchService(config, who);
    // Every startup packet that gets this far is an attempt of its service: the connect rate.
    this.ctx.stats.service(service?.name ?? UNMATCHED).connectionAttempts++;
    if (!service) {
      return this.owner.refused('no_service', clientErrors.noService(who.user, who.database, who.applicationName), 'no service matches');
    }
    if (this.ctx.shuttingDown) return this.owner.endForShutdown();
    if (!this.secure && (config.tls.mode === 'require' || config.tls.mode === 'verify-client')) {
      return this.owner.refused('tls_required', clientErrors.tlsRequired(), 'TLS required', service.name);
    }
    // As PostgreSQL: refused right after the startup packet, before any password is asked.
    if (this.ctx.sessions.size > config.maxClients) {
      return this.owner.refused('too_many_clients', clientErrors.tooManyClients(config.maxClients, null), 'too many clients', service.name);
    }
    if (service.maxClients > 0 && this.ctx.clientsOf(service.name) >= service.maxClients) {
      return this.owner.refused('too_many_clients', clientErrors.tooManyClients(service.maxClients, service.name), 'too many clients', service.name);
    }
    // The same (shared, frozen) params object as the last login: the same key.
    const appNameOf = config.serverApplicationName === 'client' ? who.applicationName : null;
    if (params !== lastKeyParams || appNameOf !== lastAppName) {
      lastKeyParams = params;
      lastAppName = appNameOf;
      lastLogin = {
        key: poolKey(who.user, who.database, params),
        welcomeKey: welcomeKey(who.user, who.database, params),
        settings: who.replication ? null : clientSettings(params, appNameOf),
      };
    }
    const method = service.auth.method;
    if (method === 'trust') return this.owner.admitted(who, service, lastLogin, rest);
    if (method === 'cert') {
      if (this.peerCommonName !== null && this.peerCommonName === who.user) return this.owner.admitted(who, service, lastLogin, rest);
      return this.owner.refused('auth_failed', clientErrors.certFailed(who.user), 'authentication failed: no client certificate for the user', service.name);
    }
    // The password in clear goes over TLS only.
    if (method === 'password' && !this.secure) return this.owner.refused('tls_required', clientErrors.tlsRequired(), 'TLS required', service.name);
    const timeoutMs = config.authTimeoutMs;
    const auth: PendingAuth = { exchange: null, method, who, service, login: lastLogin, timeoutMs };
    this.auth = auth;
    this.deadline = Date.now() + timeoutMs;
    this.held = EMPTY;
    const credentials = this.ctx.credentials();
    const known = credentials.lookup(who.user);
    if (known !== undefined) return this.beginExchange(auth, known, rest);
    // Only the database knows (auth.query): the exchange starts once it has answered, within authTimeoutMs.
    if (rest.length > 0) this.held = Buffer.from(rest);
    credentials.fetch(who.user).then(
      (k) => this.afterLookup(auth, 'password lookup', () => this.beginExchange(auth, k, EMPTY)),
      (err: Error) =>
        this.afterLookup(auth, 'password lookup failure', () => {
          this.ctx.log.warn({ service: service.name, user: who.user, err: err.message }, 'auth.query: password lookup failed; client refused');
          this.endAuth();
          this.owner.refused('auth_failed', clientErrors.passwordLookupFailed(who.user), 'password lookup failed', service.name);
        }),
    );
  }

  /** A lookup has answered: acted on only if this client still waits for it; a failure here is this client's alone. */
  private afterLookup(auth: PendingAuth, where: string, act: () => void): void {
    if (this.auth !== auth || this.owner.ended) return;
    try {
      act();
    } catch (err) {
      this.owner.failed(err, where);
    }
  }

  /** The password exchange begins: the request for the method, then whatever the client already sent. */
  private beginExchange(auth: PendingAuth, known: KnownSecret | null, rest: Buffer): void {
    auth.exchange = new Authentication(auth.method, auth.who.user, known, this.channelBinding);
    this.socket.write(auth.exchange.start());
    const early = this.held!;
    this.held = EMPTY;
    const pending = early.length === 0 ? rest : rest.length === 0 ? early : Buffer.concat([early, rest]);
    if (pending.length > 0) this.readAuth(pending);
  }

  private endAuth(): void {
    this.auth = null;
    this.held = null;
    this.deadline = 0;
  }

  /** The client's answers to the authentication requests: whole messages, each taken in turn. */
  private readAuth(chunk: Buffer): void {
    let buf = this.held!.length > 0 ? Buffer.concat([this.held!, chunk]) : chunk;
    if (this.auth!.exchange === null) {
      // Nothing is asked yet (the lookup runs): a client has no business sending more than one answer's worth.
      if (buf.length > MAX_AUTH_MESSAGE + 1) {
        this.endAuth();
        return this.owner.protocolViolation('unexpected data before the authentication request');
      }
      this.held = Buffer.from(buf);
      return;
    }
    while (this.auth !== null && buf.length >= 5) {
      const length = buf.readInt32BE(1);
      if (length < 4 || length > MAX_AUTH_MESSAGE) {
        this.held = null;
        return this.owner.protocolViolation(`invalid message length ${length} during authentication`);
      }
      if (buf.length < length + 1) break;
      const msg = buf.subarray(0, length + 1);
      buf = buf.subarray(length + 1);
      this.authMessage(msg, buf);
    }
    if (this.held !== null) this.held = buf.length > 0 ? Buffer.from(buf) : EMPTY;
  }

  private authMessage(msg: Buffer, rest: Buffer): void {
    const auth = this.auth!;
    const step = auth.exchange!.receive(msg);
    if (step.kind === 'continue') {
      this.socket.write(step.send);
      return;
    }
    this.endAuth();
    if (step.kind === 'failed') {
      if (this.ctx.log.isLevelEnabled('info')) {
        this.ctx.log.info({ service: auth.service.name, user: auth.who.user, reason: step.reason }, 'client authentication failed');
      }
      return this.owner.refused('auth_failed', step.error, `authentication failed: ${step.reason}`, auth.service.name);
    }
    if (step.send !== null) this.socket.write(step.send);
    if (step.clientKey !== null) this.ctx.credentials().proved(auth.who.user, step.clientKey);
    this.owner.admitted(auth.who, auth.service, auth.login, Buffer.from(rest));
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
const TLS_ACCEPTED = Buffer.from('S');

/** The longest answer to an authentication request PostgreSQL reads (PG_MAX_AUTH_TOKEN_LENGTH). */
const MAX_AUTH_MESSAGE = 65535;

/** The keys of the last params object seen (startup.ts shares it between identical packets), for that application_name mode. */
let lastKeyParams: Readonly<Record<string, string>> | null = null;
let lastAppName: string | null = null;
let lastLogin: LoginKeys = { key: '', welcomeKey: '', settings: null };
