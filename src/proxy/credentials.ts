// What the proxy knows of its clients' passwords, from the config's
// auth.users (passwordEnv read then) and auth.file (PgBouncer's
// userlist.txt), built at start and at each reload, and from auth.query
// (looked up in the database, cached for cacheMs). Secrets never leave
// here but to check a client's answer or to log in to the server.
import { randomBytes } from 'node:crypto';
import { readSettingFile } from '../io/files.js';
import { keysFromPassword, SCRAM_ITERATIONS } from '../auth/scram.js';
import { parseSecret, type Secret } from '../auth/secret.js';
import { parseUserlist } from '../auth/userlist.js';
import type { KnownSecret } from '../client/authenticate.js';
import type { Config } from '../types/config.js';
import type { ScramClientKey } from '../server/scram.js';
import { lookUpSecret, type LookupPool } from '../server/authQuery.js';

/** What the proxy knows of one user; `clientKey` once a client has proved it against the stored verifier. */
interface Known extends KnownSecret {
  clientKey?: Buffer;
}

/** What a lookup found for one user (null: nothing to log in with), and when. */
interface Looked {
  known: Known | null;
  at: number;
}

/** Users whose lookups are remembered; past it the oldest are forgotten (random user names must not grow memory). */
const MAX_LOOKED = 10_000;

export class Credentials {
  private readonly known = new Map<string, Known>();
  /** auth.query's answers, by user, oldest first. */
  private readonly looked: Map<string, Looked>;
  /** Lookups under way, so that a burst of one user's clients asks once. */
  private readonly inFlight = new Map<string, Promise<KnownSecret | null>>();

  private constructor(
    secrets: Map<string, Secret>,
    previous: Credentials | null,
    private readonly config: Config,
    private readonly pool: LookupPool | null,
  ) {
    for (const [user, secret] of secrets) this.known.set(user, withProof(secret, previous?.known.get(user)));
    // A reload that keeps the same lookup keeps its answers (each still expires on time).
    const q = config.auth.query;
    const pq = previous?.config.auth.query;
    const same = q && pq && q.user === pq.user && q.database === pq.database && q.sql === pq.sql;
    this.looked = same ? previous!.looked : new Map();
  }

  /** Reads the config's sources; throws an Error naming the source (never a secret) when one cannot be read. */
  static load(config: Config, previous: Credentials | null = null, pool: LookupPool | null = null): Credentials {
    const secrets = new Map<string, Secret>();
    const file = config.auth.file;
    if (file !== undefined) {
      const text = readSettingFile('auth.file', file).toString('utf8');
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
    const q = config.auth.query;
    if (q?.passwordEnv !== undefined && !process.env[q.passwordEnv]) {
      throw new Error(`auth.query: the environment variable ${q.passwordEnv} of the lookup user "${q.user}" is not set`);
    }
    const h = config.headroom;
    if (h.passwordEnv !== undefined && !process.env[h.passwordEnv]) {
      throw new Error(`headroom: the environment variable ${h.passwordEnv} of the reading user "${h.user}" is not set`);
    }
    return new Credentials(secrets, previous, config, pool);
  }

  /**
   * What is known of `user`'s password now, or null; undefined when only a
   * lookup (auth.query) can tell. A password kept in clear gets its SCRAM
   * keys here, once, with a salt of this process's.
   */
  lookup(user: string, now = Date.now()): KnownSecret | null | undefined {
    const k = this.known.get(user);
    if (k) return withScram(k);
    const q = this.config.auth.query;
    if (!q) return null;
    const l = this.looked.get(user);
    return l && now - l.at < q.cacheMs ? l.known && withScram(l.known) : undefined;
  }

  /** Asks the database (auth.query) what `user`'s password is; rejects with a LookupError when it cannot be asked. */
  fetch(user: string): Promise<KnownSecret | null> {
    const q = this.config.auth.query;
    if (!q || !this.pool) return Promise.resolve(null);
    let pending = this.inFlight.get(user);
    if (!pending) {
      pending = lookUpSecret(this.pool, q, user)
        .then((text) => {
          const before = this.looked.get(user);
          const known = text === null || text === '' ? null : withProof(parseSecret(text), before?.known ?? undefined);
          this.remember(user, { known, at: Date.now() });
          return known && withScram(known);
        })
        .finally(() => this.inFlight.delete(user));
      this.inFlight.set(user, pending);
    }
    return pending;
  }

  private remember(user: string, looked: Looked): void {
    this.looked.delete(user);
    this.looked.set(user, looked);
    if (this.looked.size > MAX_LOOKED) this.looked.delete(this.looked.keys().next().value!);
  }

  /** Static sources first, then what a lookup found (still used to log in to the server after it expires for clients). */
  private entry(user: string): Known | undefined {
    return this.known.get(user) ?? this.looked.get(user)?.known ?? undefined;
  }

  /**
   * A client of `user` proved its password against the stored SCRAM
   * verifier, and so revealed its ClientKey: with it, server connections
   * log in as `user` without the password (as PgBouncer does).
   */
  proved(user: string, clientKey: Buffer): void {
    const k = this.entry(user);
    if (k?.secret.kind === 'scram') k.clientKey = clientKey;
  }

  /**
   * What logs in to the server as `user`: the password in clear, its md5
   * hash (which answers md5 alone), or a proved ClientKey (SCRAM alone).
   */
  serverPassword(user: string): string | ScramClientKey | undefined {
    const k = this.entry(user);
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

/** `k`, with SCRAM keys for a password kept in clear (a salt of this process's, made once), so that SCRAM can be offered. */
function withScram(k: Known): Known {
  if (k.secret.kind === 'password' && !k.scram) k.scram = keysFromPassword(k.secret.password, randomBytes(16), SCRAM_ITERATIONS);
  return k;
}

/** `secret`, keeping the ClientKey a client proved against `before` if the verifier is the same. */
function withProof(secret: Secret, before: Known | undefined): Known {
  const same = before?.clientKey && before.secret.kind === 'scram' && secret.kind === 'scram' && before.secret.keys.storedKey.equals(secret.keys.storedKey);
  return { secret, clientKey: same ? before.clientKey : undefined };
}
