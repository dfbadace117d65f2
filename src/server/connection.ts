// One server connection: TCP to the upstream, login (cleartext, md5,
// SCRAM-SHA-256), then either forwarding raw chunks to the client that owns
// it, or running the proxy's own queries (reset) when nobody does.
// Without the .js: older ESM resolvers (tap's ts-node loader) map "./dist/*" first.
import { Parser } from 'pg-protocol/dist/parser';
import { serialize } from 'pg-protocol/dist/serializer';
import type { BackendMessage } from 'pg-protocol/dist/messages';
import { Backend } from '../protocol/codes.js';
import { errorResponse, startupMessage, type ErrorFields } from '../protocol/encode.js';
import { FrameScanner } from '../protocol/framing.js';
import { clientErrors } from '../errors.js';
import { connectTransport, type ConnectHandler, type SocketTransport } from '../io/socket.js';
import { isMd5Hash, md5Password, md5Response } from '../auth/md5.js';
import { startTls, type TlsUpgradeHandler } from '../io/tls.js';
import { ScramClient, type ScramClientKey } from './scram.js';
import type { UpstreamTls } from './upstreamTls.js';
import { BASE, type Settings } from './settings.js';

/** Who receives the server's bytes while linked. */
export interface ServerOwner {
  onServerData(chunk: Buffer): void;
  onServerDrain(): void;
  onServerClose(cause: string): void;
}

export interface ServerLogin {
  host: string;
  port: number;
  user: string;
  database: string;
  /** The client's other startup parameters (search_path, TimeZone, options…). */
  params: Record<string, string>;
  applicationName: string;
  /** A password, an md5 hash (answers md5 only), or a client's SCRAM key (answers SCRAM only). */
  password: () => string | ScramClientKey | undefined;
  service: string;
  connectTimeoutMs: number;
  /** TCP keepalive idle time (0: off), so a server host that vanished is noticed. */
  keepAliveMs: number;
  /** TCP_USER_TIMEOUT (0: the kernel's), so a server host that vanished with bytes in flight is noticed too. */
  userTimeoutMs: number;
  /** TLS towards the server (upstream.tls). */
  tls: UpstreamTls;
}

/**
 * Why a server connection could not be opened. `transient` failures (the
 * database is down, full, or starting) are retried with backoff while
 * clients keep waiting; the others (wrong password, no such database) are
 * sent to the waiting clients as `errorResponse`, unchanged when it came
 * from PostgreSQL (`fromServer`). `sqlstate` is the error's code; null
 * when there is none (the network failed, or the server closed).
 */
export class ServerLoginError extends Error {
  constructor(
    message: string,
    readonly transient: boolean,
    readonly errorResponse?: Buffer,
    readonly sqlstate: string | null = null,
    readonly fromServer = false,
  ) {
    super(message);
  }
}

// SQLSTATE classes and codes after which trying again later can succeed.
const TRANSIENT_SQLSTATE = /^(08|53|57P0[123]|58)/;

/** SSLRequest: length 8, code 80877103. */
const SSL_REQUEST = Buffer.from([0, 0, 0, 8, 4, 210, 22, 47]);
const TLS_YES = 0x53; // 'S'
const TLS_NO = 0x4e; // 'N'

type Phase = 'connecting' | 'negotiating' | 'tls' | 'login' | 'ready' | 'closed';

/** The proxy's own conversation in progress (login, or its statements): who hears the messages, and how it fails. */
interface Control {
  reject: (err: Error) => void;
  onMessage: (msg: BackendMessage, raw: Buffer) => void;
}

export class ServerConnection implements ConnectHandler, TlsUpgradeHandler {
  /** The TCP connection; a TLS one once the server has agreed to TLS. */
  private transport: SocketTransport;
  /** Why the TLS handshake with the server failed, if it did. */
  private tlsError: NodeJS.ErrnoException | null = null;
  readonly createdAt = Date.now();
  processId = 0;
  secretKey = 0;
  /** The per-checkout settings applied to this connection (settings.ts): BASE as it logged in, and after DISCARD ALL. */
  settings: Settings = BASE;
  /** ParameterStatus values the proxy's settings queries got back since login (or the last DISCARD ALL). */
  readonly reported = new Map<string, string>();
  /** ParameterStatus values the server reported at login, in order. */
  readonly params: [string, string][] = [];
  owner: ServerOwner | null = null;
  /** Set when the server sent an error while idle: the connection is not reused. */
  broken = false;
  /**
   * Cancel requests sent to the postmaster for this connection whose
   * connection the postmaster has not yet closed (see ServerPool.cancelQuery).
   */
  cancelsInFlight = 0;
  /** A release that waits for those cancels: whether the client left it reusable. */
  releaseAfterCancel: boolean | null = null;
  /** Called at once when the socket closes (the pool stops handing it out). */
  onSocketClose: () => void = () => {};
  /** Called when an idle connection turns out to be unusable. */
  onBroken: () => void = () => {};
  private phase: Phase = 'connecting';
  private control: Control | null = null;
  private controlBuf: Buffer = Buffer.alloc(0);
  private closeCause = 'closed';
  private readonly idleScanner = new FrameScanner((type) => {
    if (type === Backend.ErrorResponse) this.markBroken();
  });
  onClosed: (cause: string) => void = () => {};

  constructor(
    readonly id: number,
    readonly login: ServerLogin,
  ) {
    this.transport = connectTransport(
      { host: login.host, port: login.port, keepAliveMs: login.keepAliveMs, userTimeoutMs: login.userTimeoutMs, deferDirect: login.tls.mode !== 'disable' },
      this,
    );
  }

  // ---- transport events ----

  onConnect(): void {
    if (this.login.tls.mode === 'disable') return this.sendStartup();
    this.phase = 'negotiating';
    this.transport.write(SSL_REQUEST);
  }

  /** TlsUpgradeHandler: the TLS handshake with the server is done (and verified, as the mode asks). */
  onSecure(): void {
    this.sendStartup();
  }

  /** The server's one-byte answer to SSLRequest. */
  private negotiated(chunk: Buffer): void {
    const { tls } = this.login;
    // Bytes after the answer and before the handshake could be injected by anyone on the path (CVE-2021-23222).
    if (chunk.length > 1) return this.refuseLogin(clientErrors.serverProtocolViolation('received unencrypted data after SSL response'));
    if (chunk[0] === TLS_YES) {
      this.phase = 'tls';
      this.transport = startTls(this.transport, tls.options(this.login.host), this);
      (this.transport.socket as NodeJS.EventEmitter).once('error', (err: NodeJS.ErrnoException) => (this.tlsError = err));
      return;
    }
    if (chunk[0] !== TLS_NO) return this.refuseLogin(clientErrors.serverProtocolViolation(`unexpected response to SSLRequest (0x${chunk[0].toString(16)})`));
    if (tls.required) return this.refuseLogin(clientErrors.upstreamTlsUnavailable(tls.mode));
    this.transport.goDirect();
    this.sendStartup();
  }

  /** The login cannot succeed, for a reason of the proxy's own: its waiters get `fields`, and no retry helps. */
  private refuseLogin(fields: ErrorFields): void {
    const control = this.control;
    this.control = null;
    control?.reject(new ServerLoginError(fields.message, false, errorResponse(fields), fields.code));
    this.transport.destroy();
  }

  private sendStartup(): void {
    this.phase = 'login';
    const { login } = this;
    this.transport.write(
      startupMessage({
        client_encoding: 'UTF8',
        ...login.params,
        user: login.user,
        database: login.database,
        application_name: login.applicationName,
      }),
    );
  }

  onDrain(): void {
    this.owner?.onServerDrain();
  }

  onError(message: string): void {
    this.closeCause = message;
  }

  onClose(): void {
    const was = this.phase;
    this.phase = 'closed';
    if (this.control) {
      const c = this.control;
      this.control = null;
      c.reject(this.closedDuringLogin(was));
    }
    // The pool's callbacks and the owner's are error boundaries of their own: none of these throws.
    this.onSocketClose();
    if (was === 'ready') this.owner?.onServerClose(this.closeCause);
    // After the open() promise has settled, so a failed login is classified
    // (backoff, or failing its waiters) before its slot is handed out again.
    const cause = this.closeCause;
    setImmediate(() => this.onClosed(cause));
  }

  /**
   * The server closed before login finished. A TLS handshake refused for a
   * reason other than the network (a certificate that does not verify, no
   * common protocol) is not retried: its waiters get the reason at once.
   */
  private closedDuringLogin(phase: Phase): ServerLoginError {
    const err = this.tlsError;
    const network = err === null || (err.code !== undefined && /^E[A-Z]+$/.test(err.code));
    if (phase === 'tls' && !network) {
      const fields = clientErrors.upstreamTlsFailed(err.message);
      return new ServerLoginError(fields.message, false, errorResponse(fields), fields.code);
    }
    return new ServerLoginError(`upstream ${this.login.host}:${this.login.port}: ${this.closeCause}`, true);
  }

  get ready(): boolean {
    return this.phase === 'ready';
  }

  /**
   * Fit to hand to a client: logged in, open, nothing unexpected from the
   * server, and not in the middle of a message it sent unprompted.
   */
  get usable(): boolean {
    // A conversation of the proxy's own still running (a settings query whose client left): its replies are yet to come.
    return this.phase === 'ready' && !this.broken && this.transport.writable && this.idleScanner.atBoundary && this.control === null;
  }

  private markBroken(): void {
    if (this.broken) return;
    this.broken = true;
    if (!this.owner) this.onBroken();
  }

  /** Connects and logs in; resolves when the server is ready for queries. */
  open(): Promise<void> {
    const { login } = this;
    const timer = setTimeout(() => {
      this.closeCause = `connect timeout after ${login.connectTimeoutMs} ms`;
      this.transport.destroy();
    }, login.connectTimeoutMs);
    return new Promise<void>((resolve, reject) => {
      let scram: ScramClient | null = null;
      const fail = (err: ServerLoginError) => {
        this.control = null;
        reject(err);
        this.transport.destroy();
      };
      const ourError = (fields: ErrorFields) =>
        fail(new ServerLoginError(fields.message, false, errorResponse(fields), fields.code));
      this.control = {
        reject,
        onMessage: (msg, raw) => {
          const m = msg as unknown as Record<string, unknown> & { name: string };
          switch (m.name) {
            case 'authenticationOk':
              return;
            case 'authenticationCleartextPassword':
            case 'authenticationMD5Password': {
              const pw = login.password();
              if (typeof pw !== 'string') return ourError(clientErrors.noServerPassword(login.service, m.name.slice(14)));
              // An md5 hash (auth.file) answers md5 as the password would; never sent in clear.
              if (isMd5Hash(pw) && m.name !== 'authenticationMD5Password') return ourError(clientErrors.noServerPassword(login.service, m.name.slice(14)));
              const reply =
                m.name !== 'authenticationMD5Password' ? pw : isMd5Hash(pw) ? md5Response(pw, m.salt as Buffer) : md5Password(login.user, pw, m.salt as Buffer);
              this.transport.write(serialize.password(reply));
              return;
            }
            case 'authenticationSASL': {
              const mechanisms = m.mechanisms as string[];
              if (!mechanisms.includes('SCRAM-SHA-256')) {
                return ourError(clientErrors.unsupportedServerAuth(`SASL ${mechanisms.join(' ')}`));
              }
              const pw = login.password();
              if (pw === undefined || (typeof pw === 'string' && isMd5Hash(pw))) {
                return ourError(clientErrors.noServerPassword(login.service, 'SCRAM-SHA-256'));
              }
              scram = new ScramClient(pw);
              this.transport.write(serialize.sendSASLInitialResponseMessage('SCRAM-SHA-256', scram.clientFirst()));
              return;
            }
            case 'authenticationSASLContinue':
              try {
                this.transport.write(serialize.sendSCRAMClientFinalMessage(scram!.clientFinal(m.data as string)));
              } catch (err) {
                return ourError(clientErrors.serverProtocolViolation((err as Error).message));
              }
              return;
            case 'authenticationSASLFinal':
              try {
                scram!.verifyServerFinal(m.data as string);
              } catch (err) {
                return ourError(clientErrors.serverProtocolViolation((err as Error).message));
              }
              return;
            case 'parameterStatus':
              this.params.push([m.parameterName as string, m.parameterValue as string]);
              return;
            case 'backendKeyData':
              this.processId = m.processID as number;
              this.secretKey = m.secretKey as number;
              return;
            case 'readyForQuery':
              this.control = null;
              this.phase = 'ready';
              clearTimeout(timer);
              resolve();
              return;
            case 'error': {
              const code = String(m.code ?? '');
              return fail(new ServerLoginError(String(m.message), TRANSIENT_SQLSTATE.test(code), raw, code || null, true));
            }
            case 'notice':
              return;
            default:
              if (m.name.startsWith('authentication')) return ourError(clientErrors.unsupportedServerAuth(m.name));
              return ourError(clientErrors.serverProtocolViolation(`unexpected ${m.name} during login`));
          }
        },
      };
    }).finally(() => clearTimeout(timer));
  }

  /**
   * Runs one simple query that the proxy itself issued (e.g. DISCARD ALL)
   * and resolves at its ReadyForQuery; rejects on an error or a status
   * other than idle. Only while no client owns the connection.
   */
  async query(sql: string, timeoutMs = 5000): Promise<void> {
    await this.converse(serialize.query(sql), sql, timeoutMs);
  }

  /**
   * Runs one statement of the proxy's own with `params` as text values
   * ($1…, never spliced into the SQL), and resolves with its rows as text.
   * The same conditions as query().
   */
  rows(sql: string, params: string[], timeoutMs = 5000): Promise<(string | null)[][]> {
    const messages = Buffer.concat([
      serialize.parse({ text: sql }),
      serialize.bind({ values: params }),
      serialize.execute({}),
      serialize.sync(),
    ]);
    return this.converse(messages, sql, timeoutMs);
  }

  /**
   * Sends the proxy's settings query (settings.ts) ahead of what the owner
   * writes next, in the same round trip: its replies are read here, never
   * reach the owner, and the owner's own follow. The parameters it reports
   * go to `reported`. `done` runs at its ReadyForQuery, with the server's
   * error if it failed (the connection closing meanwhile: the owner hears
   * of that as usual, and `done` gets the cause).
   */
  applySettings(sql: string, done: (error: ErrorFields | null) => void): void {
    if (this.phase !== 'ready' || this.control) throw new Error('settings query on a connection that is not ready');
    let failure: ErrorFields | null = null;
    this.control = {
      reject: (err) => done({ severity: 'ERROR', code: '08006', message: err.message }),
      onMessage: (msg) => {
        const m = msg as unknown as { name: string; parameterName?: string; parameterValue?: string } & Partial<ErrorFields>;
        if (m.name === 'parameterStatus') this.reported.set(m.parameterName!, m.parameterValue!);
        else if (m.name === 'error') failure = { severity: 'ERROR', code: String(m.code ?? ''), message: String(m.message ?? '') };
        else if (m.name === 'readyForQuery') {
          this.control = null;
          done(failure);
        }
      },
    };
    this.transport.write(serialize.query(sql));
  }

  /** The proxy reset the connection (DISCARD ALL): every setting is its login's again. */
  settingsReset(): void {
    this.settings = BASE;
    this.reported.clear();
  }

  /** Sends `messages` (ending with a Query or a Sync) and collects the rows until ReadyForQuery. */
  private converse(messages: Buffer, what: string, timeoutMs: number): Promise<(string | null)[][]> {
    if (this.phase !== 'ready' || this.owner) return Promise.reject(new Error('connection not available'));
    // A reply is read only while the connection flows.
    this.transport.resume();
    return new Promise<(string | null)[][]>((resolve, reject) => {
      let failure: Error | null = null;
      const rows: (string | null)[][] = [];
      const timer = setTimeout(() => {
        this.control = null;
        this.destroy(`${what}: no reply within ${timeoutMs} ms`);
        reject(new Error(`${what}: no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      this.control = {
        reject: (err) => {
          clearTimeout(timer);
          reject(err);
        },
        onMessage: (msg) => {
          const m = msg as unknown as { name: string; message?: string; status?: string; fields?: (string | null)[] };
          if (m.name === 'dataRow') rows.push(m.fields!);
          else if (m.name === 'error') failure = new Error(m.message);
          else if (m.name === 'readyForQuery') {
            clearTimeout(timer);
            this.control = null;
            if (!failure && m.status !== 'I') failure = new Error(`status ${m.status} after ${what}`);
            if (failure) reject(failure);
            else resolve(rows);
          }
        },
      };
      this.transport.write(messages);
    });
  }

  /** Forwards client bytes; false when the client should wait for onServerDrain. */
  write(chunk: Buffer): boolean {
    return this.transport.write(chunk);
  }

  pause(): void {
    this.transport.pause();
  }

  resume(): void {
    if (this.transport.isPaused()) this.transport.resume();
  }

  /** Polite close: Terminate, then end. The slot is freed on 'close'. */
  terminate(reason: string): void {
    this.closeCause = reason;
    if (this.phase === 'ready' && this.transport.writable) {
      this.transport.end(serialize.end());
      // A server that does not close its side promptly is not waited for.
      setTimeout(() => this.transport.destroy(), 5000).unref();
    } else {
      this.transport.destroy();
    }
  }

  destroy(reason: string): void {
    this.closeCause = reason;
    this.transport.destroy();
  }

  /**
   * Every read from the server enters here: an error boundary. The owner's
   * handler is a boundary of its own; what fails here (login, the proxy's
   * own queries, the idle scan) ends this server connection, and its
   * owner, if any, sees it close (08006).
   */
  onData(chunk: Buffer): void {
    try {
      this.route(chunk);
    } catch (err) {
      this.destroy(`internal error reading from the server: ${(err as Error)?.message ?? err}`);
    }
  }

  private route(chunk: Buffer): void {
    if (this.phase === 'negotiating') return this.negotiated(chunk);
    if (this.control) return this.onControlData(chunk);
    if (this.owner) return this.owner.onServerData(chunk);
    // Nobody owns it: the server spoke unprompted (a notice, a parameter
    // change, or a FATAL before it goes away). An error marks it broken.
    if (this.idleScanner.scan(chunk)) this.markBroken();
  }

  /** Login and the proxy's own queries: whole messages, parsed from copies. */
  private onControlData(chunk: Buffer): void {
    this.controlBuf = this.controlBuf.length ? Buffer.concat([this.controlBuf, chunk]) : chunk;
    let buf = this.controlBuf;
    while (buf.length >= 5) {
      const length = buf.readInt32BE(1);
      if (length < 4) {
        this.destroy('server sent an invalid message length');
        return;
      }
      if (buf.length < 1 + length) break;
      const raw = Buffer.from(buf.subarray(0, 1 + length)); // a copy: the parser may keep it
      buf = buf.subarray(1 + length);
      try {
        parser.parse(raw, (msg) => this.control?.onMessage(msg, raw));
      } catch (err) {
        // The parser keeps what it had not finished: a fresh one for the next connection.
        parser = new Parser();
        throw err;
      }
      if (!this.control) {
        // Control ended (ready or failed); anything after belongs to forwarding.
        if (buf.length > 0 && this.phase === 'ready') this.route(Buffer.from(buf));
        buf = Buffer.alloc(0);
        break;
      }
    }
    this.controlBuf = buf.length ? Buffer.from(buf) : Buffer.alloc(0);
  }
}

// Every control message is handed over whole, so one parser serves all
// connections: it never holds a partial message between calls.
let parser = new Parser();
