// One client's authentication, as PostgreSQL asks for it: the request for
// the method, the client's answers checked against what the proxy knows of
// its password, and the outcome. A user the proxy knows nothing of runs the
// same exchange and fails at its end with the same error, as PostgreSQL
// does. Pure: messages in, messages out (and a random salt or nonce).
import { randomBytes } from 'node:crypto';
import { md5Hash, md5Response } from '../auth/md5.js';
import { ScramServer } from '../auth/scramServer.js';
import { keysFromPassword, sameBytes, type ScramKeys } from '../auth/scram.js';
import type { Secret } from '../auth/secret.js';
import { clientErrors } from '../errors.js';
import { authenticationCleartextPassword, authenticationMD5Password, authenticationSASL, authenticationSASLData, type ErrorFields } from '../protocol/encode.js';

/** The password methods (trust and cert never get here). */
export type PasswordMethod = 'scram-sha-256' | 'md5' | 'password';

/** What the proxy knows of a user's password, with SCRAM keys made once for a password kept in clear. */
export interface KnownSecret {
  secret: Secret;
  /** For a password kept in clear: its SCRAM keys (with a salt of the proxy's), so that SCRAM can be offered. */
  scram?: ScramKeys;
}

export type AuthStep =
  /** Bytes for the client; its next answer is awaited. */
  | { kind: 'continue'; send: Buffer }
  /** Authenticated; `send` (SASLFinal) goes before the welcome. `clientKey` is what a SCRAM proof revealed. */
  | { kind: 'ok'; send: Buffer | null; clientKey: Buffer | null }
  /** FATAL; `reason` is for the log (never a secret). */
  | { kind: 'failed'; error: ErrorFields; reason: string };

const SCRAM = 'SCRAM-SHA-256';
const SCRAM_PLUS = 'SCRAM-SHA-256-PLUS';
/** PasswordMessage, SASLInitialResponse and SASLResponse are all 'p'. */
const PASSWORD_MESSAGE = 0x70;

export class Authentication {
  private readonly exchange: 'scram' | 'md5' | 'password';
  private scram: ScramServer | null = null;
  private readonly salt = randomBytes(4);
  private step: 'initial' | 'final' = 'initial';

  constructor(
    method: PasswordMethod,
    private readonly user: string,
    private readonly known: KnownSecret | null,
    /** Over TLS: the tls-server-end-point data, and SCRAM-SHA-256-PLUS is offered first. */
    private readonly channelBinding: Buffer | null = null,
  ) {
    // As PostgreSQL: md5 in the configuration, a SCRAM verifier stored: SCRAM is used.
    this.exchange = method === 'password' ? 'password' : method === 'scram-sha-256' || known?.secret.kind === 'scram' ? 'scram' : 'md5';
  }

  /** The request that opens the exchange. */
  start(): Buffer {
    if (this.exchange === 'password') return authenticationCleartextPassword();
    if (this.exchange === 'md5') return authenticationMD5Password(this.salt);
    return authenticationSASL(this.channelBinding === null ? [SCRAM] : [SCRAM_PLUS, SCRAM]);
  }

  /** One whole client message (type byte and length included). */
  receive(msg: Buffer): AuthStep {
    if (msg[0] !== PASSWORD_MESSAGE) {
      return this.failed(clientErrors.expectedAuthResponse(this.exchange === 'scram' ? 'SASL' : 'password', msg[0]), 'unexpected message');
    }
    const body = msg.subarray(5);
    if (this.exchange === 'password') return this.passwordStep(body);
    return this.exchange === 'scram' ? this.scramStep(body) : this.md5Step(body);
  }

  /** The password in clear (over TLS): checked against whatever form of it is stored. */
  private passwordStep(body: Buffer): AuthStep {
    const end = body.indexOf(0);
    const password = (end < 0 ? body : body.subarray(0, end)).toString('utf8');
    const secret = this.known?.secret;
    if (!secret || password === '') return this.wrong(secret ? 'empty password' : 'no password known');
    let expected: Buffer;
    let got: Buffer;
    if (secret.kind === 'password') [expected, got] = [Buffer.from(secret.password), Buffer.from(password)];
    else if (secret.kind === 'md5') [expected, got] = [Buffer.from(secret.hash), Buffer.from(md5Hash(password, this.user))];
    else [expected, got] = [secret.keys.storedKey, keysFromPassword(password, secret.keys.salt, secret.keys.iterations).storedKey];
    if (!sameBytes(got, expected)) return this.wrong('wrong password');
    return { kind: 'ok', send: null, clientKey: null };
  }

  private md5Step(body: Buffer): AuthStep {
    const end = body.indexOf(0);
    const answer = (end < 0 ? body : body.subarray(0, end)).toString('utf8');
    const secret = this.known?.secret;
    const hash = secret?.kind === 'md5' ? secret.hash : secret?.kind === 'password' ? md5Hash(secret.password, this.user) : null;
    if (hash === null) return this.wrong('no password known');
    const expected = Buffer.from(md5Response(hash, this.salt));
    const got = Buffer.from(answer);
    if (!sameBytes(got, expected)) return this.wrong('wrong password');
    return { kind: 'ok', send: null, clientKey: null };
  }

  private scramStep(body: Buffer): AuthStep {
    if (this.step === 'initial') {
      // SASLInitialResponse: the mechanism, then int32 length and the client-first-message.
      const nul = body.indexOf(0);
      if (nul < 0 || body.length < nul + 5) return this.malformed('The message is too short.');
      const mechanism = body.toString('utf8', 0, nul);
      const plus = mechanism === SCRAM_PLUS && this.channelBinding !== null;
      if (mechanism !== SCRAM && !plus) return this.failed(clientErrors.invalidSaslMechanism(), 'invalid SASL mechanism');
      const len = body.readInt32BE(nul + 1);
      const data = body.subarray(nul + 5);
      if (len !== data.length) return this.malformed('The message length does not match its contents.');
      this.scram = new ScramServer(this.scramKeys(), this.user, plus ? this.channelBinding : null, this.channelBinding !== null);
      const first = this.scram.first(data.toString('utf8'));
      if (!first.ok) return this.malformed(first.reason);
      this.step = 'final';
      return { kind: 'continue', send: authenticationSASLData(false, first.value) };
    }
    const final = this.scram!.final(body.toString('utf8'));
    if (!final.ok) return final.malformed ? this.malformed(final.reason) : this.wrong(final.reason);
    return { kind: 'ok', send: authenticationSASLData(true, final.value.serverFinal), clientKey: final.value.clientKey };
  }

  /** The keys to check a SCRAM proof with; null (a mock exchange) when there are none (an md5 hash cannot give them). */
  private scramKeys(): ScramKeys | null {
    const k = this.known;
    if (!k) return null;
    if (k.secret.kind === 'scram') return k.secret.keys;
    return k.scram ?? null;
  }

  private wrong(reason: string): AuthStep {
    return this.failed(clientErrors.passwordFailed(this.user), reason);
  }

  private malformed(detail: string): AuthStep {
    return this.failed(clientErrors.malformedScram(detail), 'malformed SCRAM message');
  }

  private failed(error: ErrorFields, reason: string): AuthStep {
    return { kind: 'failed', error, reason };
  }
}
