// SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL uses it: the keys a
// password or a stored verifier gives, and the message attributes. Both
// sides use these: the proxy as a server to its clients, and as a client
// to PostgreSQL.
import { createHash, createHmac, pbkdf2Sync, timingSafeEqual } from 'node:crypto';

/** What a server stores of a password (pg_authid.rolpassword's SCRAM-SHA-256 verifier). */
export interface ScramKeys {
  iterations: number;
  salt: Buffer;
  storedKey: Buffer;
  serverKey: Buffer;
}

export const SCRAM_ITERATIONS = 4096;

export function hmac(key: Buffer, data: string | Buffer): Buffer {
  return createHmac('sha256', key).update(data).digest();
}

export function sha256(data: Buffer): Buffer {
  return createHash('sha256').update(data).digest();
}

/** Equal bytes, compared in constant time (a length that differs is no secret). */
export function sameBytes(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

export function xor(a: Buffer, b: Buffer): Buffer {
  const out = Buffer.alloc(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i] ^ b[i];
  return out;
}

/**
 * SaltedPassword. PostgreSQL applies SASLprep to the password and uses the
 * raw bytes when that fails; NFKC is SASLprep's normalisation, which is
 * what differs for the passwords clients send (e.g. 'Ⅸ' → 'IX').
 */
export function saltedPassword(password: string, salt: Buffer, iterations: number): Buffer {
  return pbkdf2Sync(password.normalize('NFKC'), salt, iterations, 32, 'sha256');
}

/** The client key and the stored verifier for `password` with this salt and iteration count. */
export function keysFromPassword(password: string, salt: Buffer, iterations: number): ScramKeys & { clientKey: Buffer } {
  const salted = saltedPassword(password, salt, iterations);
  const clientKey = hmac(salted, 'Client Key');
  return { iterations, salt, clientKey, storedKey: sha256(clientKey), serverKey: hmac(salted, 'Server Key') };
}

const VERIFIER = /^SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)$/;

/** A stored verifier, `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64); null if `text` is not one. */
export function parseVerifier(text: string): ScramKeys | null {
  const m = VERIFIER.exec(text);
  if (!m) return null;
  const iterations = Number(m[1]);
  const storedKey = Buffer.from(m[3], 'base64');
  const serverKey = Buffer.from(m[4], 'base64');
  if (!Number.isSafeInteger(iterations) || iterations < 1 || storedKey.length !== 32 || serverKey.length !== 32) return null;
  return { iterations, salt: Buffer.from(m[2], 'base64'), storedKey, serverKey };
}

/** The attributes of a SCRAM message (`a=…,b=…`); the first of each name wins. */
export function parseAttributes(msg: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const part of msg.split(',')) {
    const eq = part.indexOf('=');
    if (eq === 1 && !m.has(part[0])) m.set(part[0], part.slice(eq + 1));
  }
  return m;
}
