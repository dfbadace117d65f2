#!/usr/bin/env node
// pgbudget command line: read the config (file, upstream URL, or an embedded
// PostgreSQL), start the proxy and admin server, handle SIGHUP and SIGTERM.
import { parseArgs } from 'node:util';
import type { Config } from './config/schema.js';
import type { EmbeddedUpstream } from './embedded.js';

const USAGE = `usage: pgbudget [--config FILE] [--upstream postgres://host:port] [--listen host:port] [--admin host:port] [--log-level LEVEL]

  --config FILE      YAML config (or PGBUDGET_CONFIG); SIGHUP reloads it
  --upstream URL     one service "default" in front of this PostgreSQL (or DATABASE_URL)
  --listen host:port where clients connect (default 127.0.0.1:6432)
  --admin host:port  metrics and health (default 127.0.0.1:9187)
  --log-level LEVEL  fatal, error, warn, info, debug, trace, silent (or PGBUDGET_LOG_LEVEL)
With neither --config nor --upstream, pgbudget starts an embedded PostgreSQL and proxies to it.

       pgbudget top [--admin URL] [--token-env NAME | --token-file PATH] [--once] [--interval MS]
  a terminal view of a running pgbudget (pgbudget top --help)`;

async function main(): Promise<number> {
  let args;
  try {
    args = parseArgs({
      options: {
        config: { type: 'string', short: 'c' },
        upstream: { type: 'string' },
        listen: { type: 'string' },
        admin: { type: 'string' },
        'log-level': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    }).values;
  } catch (err) {
    process.stderr.write(`pgbudget: ${(err as Error).message}\n${USAGE}\n`);
    return 2;
  }
  if (args.help) {
    process.stdout.write(USAGE + '\n');
    return 0;
  }
  // Loaded here, not at the top: `pgbudget top` needs none of it, and it takes a second to load.
  const [{ pino }, { startPgbudget }, { configFromUpstreamUrl, loadConfigFile }, { ConfigError, parseHostPort }, { startEmbeddedPostgres }] =
    await Promise.all([import('pino'), import('./app.js'), import('./config/load.js'), import('./config/schema.js'), import('./embedded.js')]);
  const configPath = args.config ?? process.env.PGBUDGET_CONFIG;
  const upstreamUrl = args.upstream ?? process.env.DATABASE_URL;
  const levelOverride = args['log-level'] ?? process.env.PGBUDGET_LOG_LEVEL;
  const log = pino({ level: levelOverride ?? 'info', base: { app: 'pgbudget' } });

  const withOverrides = (c: Config): Config => ({
    ...c,
    listen: args.listen ? parseHostPort(args.listen) : c.listen,
    admin: args.admin ? { ...c.admin, ...parseHostPort(args.admin) } : c.admin,
  });

  let embedded: EmbeddedUpstream | null = null;
  let config: Config;
  try {
    if (configPath) config = await loadConfigFile(configPath);
    else if (upstreamUrl) config = configFromUpstreamUrl(upstreamUrl);
    else {
      embedded = await startEmbeddedPostgres(log);
      config = configFromUpstreamUrl(embedded.url);
    }
  } catch (err) {
    if (err instanceof ConfigError) {
      for (const p of err.problems) process.stderr.write(`pgbudget: invalid config: ${p}\n`);
      return 2;
    }
    process.stderr.write(`pgbudget: ${(err as Error).message}\n`);
    return 1;
  }
  config = withOverrides(config);
  if (!levelOverride) log.level = config.logLevel;

  let app;
  try {
    app = await startPgbudget(config, log);
  } catch (err) {
    process.stderr.write(`pgbudget: cannot start: ${(err as Error).message}\n`);
    await embedded?.stop();
    return 1;
  }
  const { address, adminAddress } = app;
  log.info(
    { listen: `${address.address}:${address.port}`, admin: `${adminAddress.address}:${adminAddress.port}`, services: config.services.map((s) => s.name) },
    'pgbudget ready',
  );
  if (embedded) {
    process.stdout.write(
      `\npgbudget is proxying an embedded PostgreSQL. Connect with:\n  DATABASE_URL=postgres://postgres@${address.address}:${address.port}/postgres\n` +
        `  psql "postgres://postgres@${address.address}:${address.port}/postgres"\nMetrics: http://${adminAddress.address}:${adminAddress.port}/metrics\n\n`,
    );
  }

  // Reloads run one at a time, in the order the signals came: two SIGHUPs
  // close together apply in order, and the file as it is last read wins.
  let reloads: Promise<void> = Promise.resolve();
  const reload = async (): Promise<void> => {
    try {
      const next = await loadConfigFile(configPath!);
      const notes = app.reload(withOverrides(next));
      if (!levelOverride) log.level = next.logLevel;
      log.info({ notes, services: next.services.map((s) => ({ name: s.name, budget: s.budget })) }, 'config reloaded');
    } catch (err) {
      // An entry point: whatever fails in a reload is logged, and the running config stays.
      const problems = err instanceof ConfigError ? err.problems : [(err as Error)?.message ?? String(err)];
      log.error({ problems }, 'config reload rejected; keeping the running config');
    }
  };
  process.on('SIGHUP', () => {
    if (!configPath) {
      log.warn('SIGHUP ignored: no config file to reload');
      return;
    }
    reloads = reloads.then(reload);
  });

  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) return;
      stopping = true;
      log.info({ signal }, 'shutting down');
      app
        .stop()
        .then(() => embedded?.stop())
        .then(
          () => {
            log.info('stopped');
            resolve(0);
          },
          (err: Error) => {
            log.error({ err: err.message }, 'error during shutdown');
            resolve(1);
          },
        );
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
  });
}

const command = process.argv[2] === 'top' ? import('./top/main.js').then((top) => top.runTop(process.argv.slice(3))) : main();
command.then(
  (code) => {
    // Let pino flush stdout before exiting.
    setImmediate(() => process.exit(code));
  },
  (err) => {
    process.stderr.write(`pgbudget: ${(err as Error).stack ?? err}\n`);
    process.exit(1);
  },
);
