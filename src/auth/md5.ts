// md5 password authentication as PostgreSQL does it: the stored hash is
// "md5" + md5(password + user), and the client answers a 4-byte salt with
// "md5" + md5(hex of that hash + salt).
import { createHash } from 'node:crypto';

function md5Hex(data: string | Buffer): string {
  return createHash('md5').update(data).digest('hex');
}

/** The stored form of a password (what pg_authid holds under password_encryption = md5). */
export function md5Hash(password: string, user: string): string {
  return 'md5' + md5Hex(password + user);
}

/** The client's answer to AuthenticationMD5Password, from the stored hash and the salt. */
export function md5Response(hash: string, salt: Buffer): string {
  return 'md5' + md5Hex(Buffer.concat([Buffer.from(hash.slice(3)), salt]));
}

/** The client's answer from its password (what a client sends; the proxy does this towards PostgreSQL). */
export function md5Password(user: string, password: string, salt: Buffer): string {
  return md5Response(md5Hash(password, user), salt);
}

export function isMd5Hash(text: string): boolean {
  return /^md5[0-9a-f]{32}$/.test(text);
}
