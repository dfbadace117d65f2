// `pgbudget top`: reads the admin API every interval and draws the frame.
// On a terminal it redraws in place (cursor home, each line erased before it
// is written, the cursor hidden until it quits on q, Ctrl-C or a signal).
// Without one (a pipe, `kubectl exec` without -t) frames follow one
// another in plain text; `--once` prints one frame and exits.
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import type { ProxySnapshot } from '../types/snapshot.js';
import { AdminError, readAdmin, type AdminTarget } from './fetch.js';
import { serviceRates, type Scrape, type ServiceRates } from './rates.js';
import { MIN_WIDTH, renderFrame, type Frame } from './view.js';

export const TOP_USAGE = `usage: pgbudget top [--admin URL] [--token-env NAME | --token-file PATH] [--once] [--interval MS]

  --admin URL        the admin API of a running pgbudget (default http://127.0.0.1:9187)
  --token-env NAME   the admin token is in this environment variable (as admin.tokenEnv)
  --token-file PATH  the admin token is in this file, read at each refresh (as admin.tokenFile)
  --once             print one frame in plain text and exit (1 if the admin API could not be
                     read); rates are taken over one interval
  --interval MS      between refreshes (default 1000)
Keys: q or Ctrl-C quits. NO_COLOR, or output that is not a terminal, turns colour off.`;

const DEFAULT_ADMIN = 'http://127.0.0.1:9187';

const CSI = '\x1b[';
const HOME = `${CSI}H`;
const CLEAR_SCREEN = `${CSI}2J`;
const ERASE_LINE = `${CSI}2K`;
const ERASE_BELOW = `${CSI}J`;
const HIDE_CURSOR = `${CSI}?25l`;
const SHOW_CURSOR = `${CSI}?25h`;
const RESET = `${CSI}0m`;

interface TopOptions {
  target: Omit<AdminTarget, 'token'>;
  adminText: string;
  token: () => string | null;
  once: boolean;
  intervalMs: number;
}

/** Runs `pgbudget top` with the arguments after `top`; resolves with the exit code. */
export async function runTop(argv: string[]): Promise<number> {
  let opts: TopOptions;
  try {
    const parsed = parseTopArgs(argv);
    if (parsed === 'help') {
      process.stdout.write(TOP_USAGE + '\n');
      return 0;
    }
    opts = parsed;
    opts.token();
  } catch (err) {
    process.stderr.write(`pgbudget top: ${(err as Error).message}\n${TOP_USAGE}\n`);
    return 2;
  }
  return opts.once ? once(opts) : loop(opts);
}

/** The options `argv` gives, or 'help'; throws an Error naming the bad one. */
export function parseTopArgs(argv: string[], env: NodeJS.ProcessEnv = process.env): TopOptions | 'help' {
  const { values } = parseArgs({
    args: argv,
    options: {
      admin: { type: 'string' },
      'token-env': { type: 'string' },
      'token-file': { type: 'string' },
      once: { type: 'boolean' },
      interval: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) return 'help';
  const adminText = values.admin ?? DEFAULT_ADMIN;
  let base: URL;
  try {
    base = new URL(/^[a-z][a-z0-9+.-]*:\/\//i.test(adminText) ? adminText : `http://${adminText}`);
  } catch {
    throw new Error(`--admin: not a URL: ${adminText}`);
  }
  if (base.protocol !== 'http:' && base.protocol !== 'https:') throw new Error(`--admin: http or https, not ${base.protocol}`);
  if (!base.pathname.endsWith('/')) base.pathname += '/';
  const intervalMs = values.interval === undefined ? 1000 : Number(values.interval);
  if (!Number.isInteger(intervalMs) || intervalMs < 100) throw new Error(`--interval: a whole number of milliseconds, at least 100 (got ${values.interval})`);
  if (values['token-env'] !== undefined && values['token-file'] !== undefined) throw new Error('--token-env and --token-file: give one');
  return {
    target: { base, timeoutMs: Math.max(2000, intervalMs) },
    adminText,
    token: tokenReader(values['token-env'], values['token-file'], env),
    once: values.once ?? false,
    intervalMs,
  };
}

/** Reads the token where the options say; throws naming the source, never the token. */
function tokenReader(envName: string | undefined, file: string | undefined, env: NodeJS.ProcessEnv): () => string | null {
  if (envName !== undefined) {
    return () => {
      const token = env[envName];
      if (token === undefined || token === '') throw new Error(`--token-env: the environment variable ${envName} is not set`);
      return token;
    };
  }
  if (file !== undefined) {
    return () => {
      let text: string;
      try {
        text = readFileSync(file, 'utf8');
      } catch (err) {
        throw new Error(`--token-file: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      }
      // As the admin server reads admin.tokenFile: the line, without its end.
      const token = text.replace(/[\r\n]+$/, '');
      if (token === '') throw new Error(`--token-file: ${file} is empty`);
      return token;
    };
  }
  return () => null;
}

/** One refresh's worth: what the screen shows, and the scrape the next refresh's rates start from. */
interface Refresh {
  frame: Frame;
  scrape: Scrape | null;
}

/**
 * Reads the admin API and makes a frame. `last` is the previous refresh:
 * its scrape starts the rates, and its status stays on screen (marked with
 * its time) when this read fails.
 */
async function refresh(opts: TopOptions, last: Refresh | null): Promise<Refresh> {
  const before = last?.scrape ?? null;
  try {
    const answer = await readAdmin({ ...opts.target, token: opts.token() });
    const scrape = answer.metrics === null ? null : { samples: answer.metrics, atMs: answer.atMs };
    const rates = new Map<string, ServiceRates>();
    if (scrape !== null) for (const s of answer.status.services) rates.set(s.name, serviceRates(before, scrape, s.name));
    return {
      frame: { admin: opts.adminText, at: new Date(answer.atMs), status: answer.status, statusAt: null, rates, error: null, metricsError: answer.metricsError },
      scrape: scrape ?? before,
    };
  } catch (err) {
    const message = err instanceof AdminError ? err.message : (err as Error).message ?? String(err);
    const kept: { status: ProxySnapshot | null; statusAt: Date | null } =
      last?.frame.status ? { status: last.frame.status, statusAt: last.frame.statusAt ?? last.frame.at } : { status: null, statusAt: null };
    return {
      frame: { admin: opts.adminText, at: new Date(), ...kept, rates: last?.frame.rates ?? new Map(), error: message, metricsError: null },
      scrape: before,
    };
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** `--once`: two reads an interval apart (so rates are rates), one plain frame. */
async function once(opts: TopOptions): Promise<number> {
  let r = await refresh(opts, null);
  if (r.frame.error === null) {
    await sleep(opts.intervalMs);
    r = await refresh(opts, r);
  }
  const width = Math.max(MIN_WIDTH, process.stdout.columns ?? (Number(process.env.COLUMNS) || MIN_WIDTH));
  const lines = renderFrame(r.frame, { width, height: null, color: false, refreshSeconds: null });
  process.stdout.write(lines.join('\n') + '\n');
  return r.frame.error === null ? 0 : 1;
}

function colorWanted(): boolean {
  return process.stdout.isTTY === true && !process.env.NO_COLOR && process.env.TERM !== 'dumb';
}

async function loop(opts: TopOptions): Promise<number> {
  const out = process.stdout;
  const tty = out.isTTY === true;
  const color = colorWanted();
  let last: Refresh | null = null;
  let timer: NodeJS.Timeout | null = null;
  let stopped = false;

  const draw = () => {
    if (last === null) return;
    const width = Math.max(MIN_WIDTH, out.columns ?? MIN_WIDTH);
    const height = tty ? Math.max(1, out.rows ?? 24) : null;
    const lines = renderFrame(last.frame, { width, height, color, refreshSeconds: opts.intervalMs / 1000 });
    if (tty) out.write(HOME + lines.slice(0, height ?? undefined).map((l) => ERASE_LINE + l).join('\r\n') + ERASE_BELOW);
    else out.write(lines.join('\n') + '\n\n');
  };

  return new Promise<number>((resolve) => {
    const stdin = process.stdin;
    const onKey = (key: Buffer) => {
      const k = key.toString('latin1');
      if (k === 'q' || k === 'Q' || k.includes('\x03') || k.includes('\x04')) quit();
    };
    const restore = () => {
      if (tty) out.write(`${RESET}${SHOW_CURSOR}\r\n`);
    };
    // Should anything end the process before quit() (an uncaught error), the cursor comes back.
    const onExit = () => restore();
    const quit = () => {
      if (stopped) return;
      stopped = true;
      if (timer !== null) clearTimeout(timer);
      out.off('resize', draw);
      process.off('exit', onExit);
      for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.off(sig, quit);
      if (stdin.isTTY) {
        stdin.setRawMode(false);
        stdin.off('data', onKey);
        stdin.pause();
      }
      restore();
      resolve(0);
    };
    for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, quit);
    process.on('exit', onExit);
    if (tty) {
      out.write(HIDE_CURSOR + CLEAR_SCREEN + HOME);
      out.on('resize', draw);
    }
    if (stdin.isTTY) {
      stdin.setRawMode(true);
      stdin.on('data', onKey);
      stdin.resume();
    }
    const tick = async () => {
      const started = Date.now();
      const next = await refresh(opts, last);
      if (stopped) return;
      last = next;
      draw();
      timer = setTimeout(tick, Math.max(0, opts.intervalMs - (Date.now() - started)));
    };
    void tick();
  });
}
