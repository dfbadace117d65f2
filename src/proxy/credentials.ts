// What the proxy knows of its clients' passwords, from the config's
// auth.users (passwordEnv read then) and auth.file (PgBouncer's
// userlist.txt), built at start and at each reload. Secrets never leave
// here but to check a client's answer or to log in to the server.
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { keysFromPassword, SCRAM_ITERATIONS } from '../auth/scram.js';
import { parseSecret, type Secret } from '../auth/secret.js';
import { parseUserlist } from '../auth/userlist.js';
import type { KnownSecret } from '../client/authenticate.js';
import type { Config } from '../types/config.js';
import type { ScramClientKey } from '../server/scram.js';

/** What the proxy knows of one user; `clientKey` once a client has proved it against the stored verifier. */
interface Known extends KnownSecret {
  clientKey?: Buffer;
}

export class Credentials {
  private readonly known = new Map<string, Known>();

  private constructor(secrets: Map<string, Secret>, previous: Credentials | null) {
    for (const [user, secret] of secrets) {
      // A reload keeps what clients have proved, as long as the verifier is the same.
      const before = previous?.known.get(user);
      const clientKey = before?.clientKey && before.secret.kind === 'scram' && secret.kind === 'scram' && before.secret.keys.storedKey.equals(secret.keys.storedKey) ? before.clientKey : undefined;
      this.known.set(user, { secret, clientKey });
    }
  }

  /** Reads the config's sources; throws an Error naming the source (never a secret) when one cannot be read. */
  static load(config: Config, previous: Credentials | null = null): Credentials {
    const secrets = new Map<string, Secret>();
    const file = config.auth.file;
    if (file !== undefined) {
      let text: string;
      try {
        text = readFileSync(file, 'utf8');
      } catch (err) {
        throw new Error(`auth.file: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      }
      const parsed = parseUserlist(text);
      if ('error' in parsed) throw new Error(`auth.file: ${file}, ${parsed.error}`);
      // An empty secret is no password: nobody logs in with it, as with PostgreSQL.
      for (const e of parsed.entries) if (e.secret !== '') secrets.set(e.user, parseSecret(e.secret));
    }
    for (const u of config.auth.users) {
      const password = u.passwordEnv !== undefined ? process.env[u.passwordEnv] : u.password;
      if (password === undefined || password === '') {
        throw new Error(`auth.users: the environment variable ${u.passwordEnv} of user "${u.name}" is not set`);
      }
      secrets.set(u.name, { kind: 'password', password });
    }
    return new Credentials(secrets, previous);
  }

  /**
   * What is known of `user`'s password, or null. A password kept in clear
   * gets its SCRAM keys here, once, with a salt of this process's.
   */
  lookup(user: string): KnownSecret | null {
    const k = this.known.get(user);
    if (!k) return null;
    if (k.secret.kind === 'password' && !k.scram) k.scram = keysFromPassword(k.secret.password, randomBytes(16), SCRAM_ITERATIONS);
    return k;
  }

  /**
   * A client of `user` proved its password against the stored SCRAM
   * verifier, and so revealed its ClientKey: with it, server connections
   * log in as `user` without the password (as PgBouncer does).
   */
  proved(user: string, clientKey: Buffer): void {
    const k = this.known.get(user);
    if (k?.secret.kind === 'scram') k.clientKey = clientKey;
  }

  /**
   * What logs in to the server as `user`: the password in clear, its md5
   * hash (which answers md5 alone), or a proved ClientKey (SCRAM alone).
   */
  serverPassword(user: string): string | ScramClientKey | undefined {
    const k = this.known.get(user);
    const s = k?.secret;
    if (s?.kind === 'password') return s.password;
    if (s?.kind === 'md5') return s.hash;
    if (s?.kind === 'scram' && k!.clientKey) return { clientKey: k!.clientKey, verifier: s.keys };
    return undefined;
  }

  get size(): number {
    return this.known.size;
  }
}
