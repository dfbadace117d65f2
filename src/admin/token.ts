// The admin server's bearer token: read from admin.tokenEnv or
// admin.tokenFile at start and on each reload, kept only as its SHA-256,
// and compared in constant time. The token is never logged nor put in an
// error.
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { AdminConfig } from '../types/config.js';

/** What a request must show; a null tokenHash: no token, every route open. */
export interface AdminGuard {
  tokenHash: Buffer | null;
  metricsNeedToken: boolean;
}

const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest();

/** Reads the token `admin` names; throws an Error naming the source (never the token) when it cannot be had. */
export function readAdminGuard(admin: AdminConfig): AdminGuard {
  return { tokenHash: readToken(admin), metricsNeedToken: admin.metricsNeedToken };
}

function readToken(admin: AdminConfig): Buffer | null {
  if (admin.tokenEnv !== undefined) {
    const token = process.env[admin.tokenEnv];
    if (token === undefined || token === '') throw new Error(`admin.tokenEnv: the environment variable ${admin.tokenEnv} is not set`);
    return sha256(Buffer.from(token, 'utf8'));
  }
  if (admin.tokenFile !== undefined) {
    let text: string;
    try {
      text = readFileSync(admin.tokenFile, 'utf8');
    } catch (err) {
      throw new Error(`admin.tokenFile: cannot read ${admin.tokenFile}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
    // As `echo token > file` and Kubernetes Secrets write it: the line, without its end.
    const token = text.replace(/[\r\n]+$/, '');
    if (token === '') throw new Error(`admin.tokenFile: ${admin.tokenFile} is empty`);
    return sha256(Buffer.from(token, 'utf8'));
  }
  return null;
}

/** The token an Authorization header carries, or null when it carries none (or not as a bearer token). */
export function bearerToken(authorization: string | undefined): string | null {
  const m = /^Bearer +(\S+) *$/i.exec(authorization ?? '');
  return m === null ? null : m[1];
}

/**
 * Whether `presented` is the token. Both sides are hashed first, so the
 * comparison is of equal lengths and says nothing of the token's. Node
 * gives header values one character per byte (latin1): those bytes are what
 * the client sent.
 */
export function isToken(presented: string, tokenHash: Buffer): boolean {
  return timingSafeEqual(sha256(Buffer.from(presented, 'latin1')), tokenHash);
}
