// Reading the configuration from a YAML file, or building a one-service
// configuration from an upstream URL when no file is given.
import { readFile } from 'node:fs/promises';
import { parse as parseYaml } from 'yaml';
import { ConfigError, validateConfig, type Config } from './schema.js';

export async function loadConfigFile(path: string): Promise<Config> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new ConfigError([`${path}: cannot read: ${(err as Error).message}`]);
  }
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    throw new ConfigError([`${path}: invalid YAML: ${(err as Error).message}`]);
  }
  return validateConfig(doc);
}

/**
 * `--upstream postgres://host:port` (or DATABASE_URL): one service named
 * "default" that takes every client, its budget the whole cap.
 */
export function configFromUpstreamUrl(url: string, overrides: Record<string, unknown> = {}): Config {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new ConfigError([`upstream URL: not a URL (got ${JSON.stringify(url)})`]);
  }
  if (u.protocol !== 'postgres:' && u.protocol !== 'postgresql:') {
    throw new ConfigError([`upstream URL: must start with postgres:// (got ${JSON.stringify(url)})`]);
  }
  const maxConnections = Number(u.searchParams.get('maxConnections') ?? 40);
  const service: Record<string, unknown> = { name: 'default', budget: maxConnections };
  if (u.password) service.password = decodeURIComponent(u.password);
  return validateConfig({
    // A quick start on loopback: clients are trusted, as written here; a config file can require passwords.
    auth: { method: 'trust' },
    upstream: { host: u.hostname || '127.0.0.1', port: Number(u.port || 5432), maxConnections },
    services: [service],
    defaultService: 'default',
    ...overrides,
  });
}
