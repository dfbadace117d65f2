// What the proxy knows of a client's password: the password itself, its md5
// hash, or its SCRAM verifier, as PostgreSQL and PgBouncer's userlist.txt
// store them. Never logged, never in an error.
import { isMd5Hash } from './md5.js';
import { parseVerifier, type ScramKeys } from './scram.js';

export type Secret =
  | { kind: 'password'; password: string }
  | { kind: 'md5'; hash: string }
  | { kind: 'scram'; keys: ScramKeys };

/** A stored secret as PostgreSQL writes it: "md5…", "SCRAM-SHA-256$…", else the password itself. */
export function parseSecret(text: string): Secret {
  if (isMd5Hash(text)) return { kind: 'md5', hash: text };
  const keys = text.startsWith('SCRAM-SHA-256$') ? parseVerifier(text) : null;
  if (keys) return { kind: 'scram', keys };
  return { kind: 'password', password: text };
}
