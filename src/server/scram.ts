// SCRAM-SHA-256 client side (RFC 5802 / RFC 7677), as PostgreSQL uses it:
// no channel binding ("n,,"), and the user name in the messages is ignored
// by the server, so "*" is sent.
import { randomBytes } from 'node:crypto';
import { hmac, keysFromPassword, parseAttributes, sameBytes, sha256, xor, type ScramKeys } from '../auth/scram.js';

export class ScramError extends Error {}

/**
 * A client's ClientKey (revealed by its proof when it authenticated to the
 * proxy) with the verifier it matched: enough to log in as that user
 * wherever the same verifier is stored, without the password.
 */
export interface ScramClientKey {
  clientKey: Buffer;
  verifier: ScramKeys;
}

export class ScramClient {
  private readonly clientNonce = randomBytes(18).toString('base64');
  private readonly clientFirstBare = `n=*,r=${this.clientNonce}`;
  private expectedServerSignature: Buffer | null = null;

  constructor(private readonly credential: string | ScramClientKey) {}

  /** client-first-message, sent in SASLInitialResponse. */
  clientFirst(): string {
    return `n,,${this.clientFirstBare}`;
  }

  /** Takes server-first-message, returns client-final-message. */
  clientFinal(serverFirst: string): string {
    const attrs = parseAttributes(serverFirst);
    const nonce = attrs.get('r');
    const salt = attrs.get('s');
    const iterations = Number(attrs.get('i'));
    if (!nonce || !nonce.startsWith(this.clientNonce) || nonce.length === this.clientNonce.length) {
      throw new ScramError('SCRAM server nonce does not extend the client nonce');
    }
    if (!salt || !Number.isInteger(iterations) || iterations < 1) {
      throw new ScramError('SCRAM server-first-message lacks salt or iteration count');
    }
    const keys = this.keysFor(Buffer.from(salt, 'base64'), iterations);
    const withoutProof = `c=biws,r=${nonce}`; // biws = base64("n,,")
    const authMessage = `${this.clientFirstBare},${serverFirst},${withoutProof}`;
    const proof = xor(keys.clientKey, hmac(keys.storedKey, authMessage));
    this.expectedServerSignature = hmac(keys.serverKey, authMessage);
    return `${withoutProof},p=${proof.toString('base64')}`;
  }

  private keysFor(salt: Buffer, iterations: number): { clientKey: Buffer; storedKey: Buffer; serverKey: Buffer } {
    const c = this.credential;
    if (typeof c === 'string') return keysFromPassword(c, salt, iterations);
    // The proof holds only against the verifier the key came from.
    if (!salt.equals(c.verifier.salt) || iterations !== c.verifier.iterations) {
      throw new ScramError("the server's SCRAM verifier differs from the one pgbudget authenticated the client with");
    }
    return { clientKey: c.clientKey, storedKey: sha256(c.clientKey), serverKey: c.verifier.serverKey };
  }

  /** Checks server-final-message: the server must prove it knows the password too. */
  verifyServerFinal(serverFinal: string): void {
    const v = parseAttributes(serverFinal).get('v');
    if (!v || !this.expectedServerSignature) throw new ScramError('SCRAM server-final-message lacks a signature');
    const got = Buffer.from(v, 'base64');
    if (!sameBytes(got, this.expectedServerSignature)) {
      throw new ScramError('SCRAM server signature does not match');
    }
  }
}
