// The server side of a SCRAM-SHA-256 exchange (RFC 5802) with one client,
// as PostgreSQL runs it: SCRAM-SHA-256-PLUS with tls-server-end-point
// channel binding over TLS, the user name in the messages ignored (the
// startup packet's counts). An exchange with no keys (an unknown user) runs to its end with
// a salt made up from the name and fails there, so that a client cannot
// tell which users exist. Pure but for the random nonce.
import { randomBytes } from 'node:crypto';
import { hmac, parseAttributes, sameBytes, sha256, xor, SCRAM_ITERATIONS, type ScramKeys } from './scram.js';

export type ScramResult<T> = { ok: true; value: T } | { ok: false; malformed: boolean; reason: string };

/** A secret of this process: the made-up salts of unknown users stay the same while it runs, and are not computable outside it. */
const MOCK_SECRET = randomBytes(32);

export class ScramServer {
  private readonly nonce: string;
  private clientFirstBare = '';
  private serverFirst = '';
  private gs2Header = '';
  private readonly keys: ScramKeys;

  constructor(
    keys: ScramKeys | null,
    /** Used only to make up a salt when `keys` is null. */
    user: string,
    /** The client chose SCRAM-SHA-256-PLUS, bound to this tls-server-end-point data; null: no binding. */
    private readonly binding: Buffer | null = null,
    /** The server offered PLUS (a client that says "y" is being downgraded). */
    private readonly plusOffered = false,
    nonce = randomBytes(18).toString('base64'),
  ) {
    this.nonce = nonce;
    this.keys = keys ?? { iterations: SCRAM_ITERATIONS, salt: hmac(MOCK_SECRET, user).subarray(0, 16), storedKey: Buffer.alloc(0), serverKey: Buffer.alloc(0) };
  }

  /** client-first-message → server-first-message. */
  first(clientFirst: string): ScramResult<string> {
    // gs2-header: a channel-binding flag, an authzid (PostgreSQL refuses one), and a comma.
    const m = /^([ny]|p=[^,]*),(a=[^,]*)?,/.exec(clientFirst);
    if (!m) return malformed('Unexpected channel-binding flag or attribute in SCRAM client-first-message.');
    const flag = m[1];
    if (this.binding !== null) {
      if (!flag.startsWith('p=')) return malformed('The client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel binding data.');
      if (flag !== 'p=tls-server-end-point') return { ok: false, malformed: true, reason: `unsupported SCRAM channel-binding type "${flag.slice(2)}"` };
    } else if (flag.startsWith('p=')) {
      return malformed('The client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data.');
    } else if (flag === 'y' && this.plusOffered) {
      return malformed('The client supports SCRAM channel binding but thinks the server does not.  However, this server does support channel binding.');
    }
    if (m[2]) return malformed('client uses authorization identity, but it is not supported');
    this.gs2Header = m[0];
    this.clientFirstBare = clientFirst.slice(m[0].length);
    const attrs = parseAttributes(this.clientFirstBare);
    const clientNonce = attrs.get('r');
    if (!this.clientFirstBare.startsWith('n=') || !clientNonce || !/^[\x21-\x2b\x2d-\x7e]+$/.test(clientNonce)) {
      return malformed('Could not parse the client nonce in SCRAM client-first-message.');
    }
    this.serverFirst = `r=${clientNonce}${this.nonce},s=${this.keys.salt.toString('base64')},i=${this.keys.iterations}`;
    return { ok: true, value: this.serverFirst };
  }

  /** client-final-message → server-final-message and the ClientKey the proof reveals, or why it fails. */
  final(clientFinal: string): ScramResult<{ serverFinal: string; clientKey: Buffer }> {
    const proofAt = clientFinal.lastIndexOf(',p=');
    if (proofAt < 0) return malformed('Could not find proof in SCRAM client-final-message.');
    const withoutProof = clientFinal.slice(0, proofAt);
    const attrs = parseAttributes(withoutProof);
    const bound = this.binding === null ? Buffer.from(this.gs2Header) : Buffer.concat([Buffer.from(this.gs2Header), this.binding]);
    if (attrs.get('c') !== bound.toString('base64')) {
      return malformed('SCRAM channel binding check failed.');
    }
    const nonce = attrs.get('r');
    if (!nonce || !nonce.endsWith(this.nonce) || nonce !== parseAttributes(this.serverFirst).get('r')) {
      return malformed('Nonce does not match.');
    }
    const proof = Buffer.from(clientFinal.slice(proofAt + 3), 'base64');
    const { storedKey, serverKey } = this.keys;
    if (storedKey.length === 0 || proof.length !== storedKey.length) return { ok: false, malformed: false, reason: storedKey.length === 0 ? 'no such user' : 'wrong proof length' };
    const authMessage = `${this.clientFirstBare},${this.serverFirst},${withoutProof}`;
    const clientKey = xor(proof, hmac(storedKey, authMessage));
    if (!sameBytes(sha256(clientKey), storedKey)) return { ok: false, malformed: false, reason: 'wrong password' };
    return { ok: true, value: { serverFinal: `v=${hmac(serverKey, authMessage).toString('base64')}`, clientKey } };
  }
}

function malformed(reason: string): { ok: false; malformed: true; reason: string } {
  return { ok: false, malformed: true, reason };
}
