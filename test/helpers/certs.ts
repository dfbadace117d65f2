// Certificates a test makes itself with openssl, in a temporary directory
// removed at teardown: CAs, certificates they sign, and the key forms the
// clients want (PEM for libpq and Node.js, PKCS-8 DER for the JDBC driver).
import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export interface CertDir {
  dir: string;
  /** The path of `name` in the directory. */
  file(name: string): string;
  /** A self-signed CA: `name.pem`, `name.key`. */
  makeCa(name: string): void;
  /** A certificate `ca` signs for `cn` (with `san` as subjectAltName when given): `name.pem`, `name.key` (0600). */
  makeCert(name: string, ca: string, cn: string, san?: string): void;
  /** `name.key` as unencrypted PKCS-8 DER (`name.pk8`), the form pgjdbc reads; returns its path. */
  pkcs8Der(name: string): string;
  /**
   * A copy of `name.key` that a PostgreSQL server started by test/helpers/cluster.ts can read
   * (owned by the postgres user when the tests run as root); returns its path.
   */
  serverKeyCopy(name: string): string;
}

export function makeCertDir(t: { teardown(fn: () => unknown): void }, prefix = 'pgbudget-certs-'): CertDir {
  const dir = mkdtempSync(path.join(os.tmpdir(), prefix));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = (name: string) => path.join(dir, name);
  const openssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  return {
    dir,
    file,
    makeCa(name) {
      openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.pem`, '-subj', `/CN=${name}`, '-days', '2');
    },
    makeCert(name, ca, cn, san) {
      openssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`);
      writeFileSync(file(`${name}.ext`), san ? `subjectAltName=${san}\n` : 'basicConstraints=CA:FALSE\n');
      openssl('x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.pem`, '-CAkey', `${ca}.key`, '-CAcreateserial', '-out', `${name}.pem`, '-days', '2', '-extfile', `${name}.ext`);
      chmodSync(file(`${name}.key`), 0o600); // libpq refuses a key others can read
    },
    pkcs8Der(name) {
      openssl('pkcs8', '-topk8', '-inform', 'PEM', '-outform', 'DER', '-nocrypt', '-in', `${name}.key`, '-out', `${name}.pk8`);
      chmodSync(file(`${name}.pk8`), 0o600);
      return file(`${name}.pk8`);
    },
    serverKeyCopy(name) {
      const copy = file(`${name}.server.key`);
      copyFileSync(file(`${name}.key`), copy);
      chmodSync(copy, 0o600);
      if (process.getuid?.() === 0) {
        // The cluster runs as postgres: it must reach the directory and own its key (0600).
        chmodSync(dir, 0o755);
        execFileSync('chown', ['postgres:', copy]);
      }
      return copy;
    },
  };
}
