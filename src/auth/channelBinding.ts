// SCRAM channel binding "tls-server-end-point" (RFC 5929): a hash of the
// certificate the server presents, with the hash of its signature
// algorithm, or SHA-256 where that is MD5 or SHA-1 (or cannot be told).
import { createHash } from 'node:crypto';

/** DER-encoded OIDs of the signature algorithms that hash with SHA-384 and SHA-512. */
const SHA384_SIGNATURES = ['2a864886f70d01010c', '2a8648ce3d040303']; // sha384WithRSAEncryption, ecdsa-with-SHA384
const SHA512_SIGNATURES = ['2a864886f70d01010d', '2a8648ce3d040304']; // sha512WithRSAEncryption, ecdsa-with-SHA512

/** The binding data for the certificate `der` (what the client computes from the certificate it was shown). */
export function tlsServerEndPoint(der: Buffer): Buffer {
  const hex = der.toString('hex');
  const algorithm = SHA512_SIGNATURES.some((o) => hex.includes(`06${(o.length / 2).toString(16).padStart(2, '0')}${o}`))
    ? 'sha512'
    : SHA384_SIGNATURES.some((o) => hex.includes(`06${(o.length / 2).toString(16).padStart(2, '0')}${o}`))
      ? 'sha384'
      : 'sha256';
  return createHash(algorithm).update(der).digest();
}
