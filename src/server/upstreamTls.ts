// TLS towards the server, as libpq's sslmode names it: the mode, and the
// CA (and optional client certificate) read from their files at start and
// at each reload. New server connections use what was read last.
import net from 'node:net';
import tls from 'node:tls';
import { readSettingFile } from '../io/files.js';
import type { UpstreamTlsConfig, UpstreamTlsMode } from '../types/config.js';

export interface UpstreamTls {
  readonly mode: UpstreamTlsMode;
  /** Whether a server that answers SSLRequest with 'N' is refused (require, verify-ca, verify-full). */
  readonly required: boolean;
  /** The options of tls.connect for a connection to `host`. */
  options(host: string): tls.ConnectionOptions;
}

/** The upstream TLS settings of `config`; throws an Error naming the file that cannot be used. */
export function loadUpstreamTls(config: UpstreamTlsConfig): UpstreamTls {
  const { mode } = config;
  const read = (what: 'ca' | 'cert' | 'key') => {
    const file = config[what];
    return file === undefined ? undefined : readSettingFile(`upstream.tls.${what}`, file);
  };
  const [ca, cert, key] = mode === 'disable' ? [] : [read('ca'), read('cert'), read('key')];
  let context: tls.SecureContext | undefined;
  try {
    // Without a CA of its own, verify-ca and verify-full check against Node's bundled roots, as libpq would against its system store.
    context = mode === 'disable' ? undefined : tls.createSecureContext({ ca, cert, key });
  } catch (err) {
    throw new Error(`upstream.tls: the certificate, key or CA cannot be used: ${(err as Error).message}`);
  }
  const verify = mode === 'verify-ca' || mode === 'verify-full';
  return {
    mode,
    required: mode === 'require' || verify,
    options(host: string): tls.ConnectionOptions {
      return {
        secureContext: context,
        rejectUnauthorized: verify,
        // verify-ca: the chain is checked, the name is not (libpq's meaning).
        ...(mode === 'verify-full' ? {} : { checkServerIdentity: () => undefined }),
        // The name checked under verify-full; SNI only for a name, never an address.
        host,
        ...(net.isIP(host) === 0 ? { servername: host } : {}),
      };
    },
  };
}
