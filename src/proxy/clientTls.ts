// TLS towards clients: the certificate, key and CA read from their files
// into one secure context, at start and at each reload (a new context
// serves new connections; those already up keep theirs).
import { X509Certificate } from 'node:crypto';
import { readSettingFile } from '../io/files.js';
import tls from 'node:tls';
import { tlsServerEndPoint } from '../auth/channelBinding.js';
import type { TlsConfig } from '../types/config.js';

export interface ClientTls {
  readonly context: tls.SecureContext;
  /** verify-client: a certificate signed by the CA is required. */
  readonly verifyClient: boolean;
  /** tls-server-end-point data of the certificate presented (SCRAM-SHA-256-PLUS): the same for every connection, so made once. */
  readonly channelBinding: Buffer;
}

/** The context for `config`, or null when TLS is off; throws an Error naming the file that cannot be used. */
export function loadClientTls(config: TlsConfig): ClientTls | null {
  if (config.mode === 'disable') return null;
  const read = (what: 'cert' | 'key' | 'ca') => {
    const file = config[what];
    return file === undefined ? undefined : readSettingFile(`tls.${what}`, file);
  };
  const [cert, key, ca] = [read('cert'), read('key'), read('ca')];
  let context: tls.SecureContext;
  let channelBinding: Buffer;
  try {
    context = tls.createSecureContext({ cert, key, ca });
    // The first certificate of the file is the one presented.
    channelBinding = tlsServerEndPoint(new X509Certificate(cert!).raw);
  } catch (err) {
    throw new Error(`tls: the certificate and key cannot be used: ${(err as Error).message}`);
  }
  return { context, verifyClient: config.mode === 'verify-client', channelBinding };
}
