// `pgbudget top` on a real terminal (tmux, 80 × 24) while one service
// storms: 12 clients holding pg_sleep(1) against a budget of 2, next to a
// calm service. The captured screen must show both rows, the storm's
// waiting clients and its full budget bar, and the upstream against its cap;
// q quits and gives the cursor back. Also: `--once` for scripts, a wrong
// token on screen until the token file is put right, and an admin API that
// is not there.
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import t, { type Test } from 'tap';
import { withCluster } from '../helpers/cluster.js';
import { repoRoot, run, sleep, startProxy, type TestProxy } from '../helpers/proxy.js';

const cluster = await withCluster(t, { maxConnections: 20 });
await cluster.query('create role storm login; create role calm login');

const TOKEN_ENV = 'PGBUDGET_TEST_TOP_TOKEN';
const token = randomBytes(24).toString('base64url');
process.env[TOKEN_ENV] = token;
const cli = path.join(repoRoot, 'dist', 'cli.js');
const STORM_CLIENTS = 12;

const proxy = await startProxy(t, cluster, {
  admin: { listen: '127.0.0.1:0', tokenEnv: TOKEN_ENV },
  upstream: { maxConnections: 10 },
  headroom: { user: 'postgres', intervalMs: 500 },
  services: [
    // A short queue timeout, so that the storm also shows timeouts.
    // Surging after 1 s above its budget, rather than 10, so that the flag shows in a short test.
    { name: 'storm', match: { user: 'storm' }, budget: 2, poolMode: 'transaction', queue: { timeoutMs: 2000 }, surge: { forMs: 1000 } },
    { name: 'calm', match: { user: 'calm' }, budget: 4, poolMode: 'transaction' },
  ],
});
const admin = `http://127.0.0.1:${proxy.adminAddress.port}`;

/** `n` clients of `user` running `sql` in a loop (reconnecting when pgbudget ends them) until stop(). */
function load(p: TestProxy, user: string, n: number, sql: string, pauseMs = 0) {
  let running = true;
  const open = new Set<pg.Client>();
  const loops = Array.from({ length: n }, async () => {
    while (running) {
      const c = new pg.Client({ connectionString: p.url(user) });
      c.on('error', () => undefined);
      open.add(c);
      try {
        await c.connect();
        while (running) {
          await c.query(sql);
          if (pauseMs > 0) await sleep(pauseMs);
        }
      } catch {
        // A queue timeout (53300): connect again, as a retrying service does.
      } finally {
        open.delete(c);
        await c.end().catch(() => undefined);
      }
    }
  });
  return async () => {
    running = false;
    await Promise.all([...open].map((c) => c.end().catch(() => undefined)));
    await Promise.all(loops);
  };
}

const stopStorm = load(proxy, 'storm', STORM_CLIENTS, 'select pg_sleep(1)');
const stopCalm = load(proxy, 'calm', 2, 'select 1', 200);
t.teardown(async () => {
  await stopStorm();
  await stopCalm();
});

/** A directory for the sessions' output, the token file and tmux's socket. */
const outputDir = await mkdtemp(path.join(os.tmpdir(), 'pgbudget-top-'));
const output = (session: string) => path.join(outputDir, `${session}.out`);

/** tmux on a server of this test's own (its socket in outputDir), so no user's tmux is touched. */
const tmux = (...args: string[]) => run('tmux', ['-S', path.join(outputDir, 'tmux.sock'), ...args], { env: { [TOKEN_ENV]: token } });
t.teardown(async () => {
  await tmux('kill-server');
  await rm(outputDir, { recursive: true, force: true });
});

/** Runs `pgbudget top …args` in a new 80 × 24 tmux session that stays on screen after it exits. */
async function topSession(t: Test, name: string, args: string[]): Promise<void> {
  // The shell says how it ended: tmux itself does not always learn the exit status.
  const command = [process.execPath, cli, 'top', '--admin', admin, ...args].map((a) => `'${a}'`).join(' ') + '; echo "exit $?"';
  const r = await tmux('new-session', '-d', '-s', name, '-x', '80', '-y', '24', command);
  t.equal(r.code, 0, `tmux new-session: ${r.stderr}`);
  await tmux('set-option', '-t', name, 'remain-on-exit', 'on');
  // What the program writes from here on, escape sequences and all.
  await tmux('pipe-pane', '-t', name, `cat >> '${output(name)}'`);
}

/** All that was written to the session's terminal, once the shell's "exit N" is in (2 s at most). */
async function written(session: string): Promise<string> {
  const deadline = Date.now() + 2000;
  let text = await readFile(output(session), 'latin1');
  while (!/exit \d+\r?\n$/.test(text) && Date.now() < deadline) {
    await sleep(50);
    text = await readFile(output(session), 'latin1');
  }
  return text;
}

const screen = async (name: string) => (await tmux('capture-pane', '-p', '-t', name)).stdout.replace(/\n+$/, '');
/** Whether the session's program runs (0) or has exited (1), and whether the cursor shows. */
const paneState = async (name: string) => (await tmux('display-message', '-p', '-t', name, '#{pane_dead} #{cursor_flag}')).stdout.trim();

/** Waits (3 s at most) until `pgbudget top` has exited; its exit status as the shell after it said it, or null. */
async function exitStatus(name: string): Promise<number | null> {
  const deadline = Date.now() + 3000;
  let m: RegExpExecArray | null = null;
  while ((m = /^exit (\d+)$/m.exec(await screen(name))) === null && Date.now() < deadline) await sleep(50);
  return m === null ? null : Number(m[1]);
}

/** Waits until `cond` holds for the session's screen; returns that screen. */
async function screenWhere(t: Test, name: string, what: string, cond: (s: string) => boolean, ms = 5000): Promise<string> {
  const deadline = Date.now() + ms;
  let s = await screen(name);
  while (!cond(s) && Date.now() < deadline) {
    await sleep(100);
    s = await screen(name);
  }
  t.ok(cond(s), `${what}; screen:\n${s}`);
  return s;
}

/** The storm is on: most of its clients wait, and pgbudget calls it a surge. */
async function surging(t: Test): Promise<void> {
  const deadline = Date.now() + 10_000;
  const storm = () => proxy.proxy.snapshot().services.find((s) => s.name === 'storm')!;
  const on = () => storm().clients.waiting >= STORM_CLIENTS / 2 && storm().surge.surging;
  while (!on() && Date.now() < deadline) await sleep(50);
  t.ok(on(), `storm has ${storm().clients.waiting} clients waiting, surging: ${storm().surge.surging}`);
}

const row = (s: string, service: string) => s.split('\n').find((l) => l.startsWith(`${service} `));

t.test('on a terminal during a surge: both services, the storm waiting at a full budget, the cap; q quits', async (t) => {
  await surging(t);
  await topSession(t, 'surge', ['--token-env', TOKEN_ENV]);
  await sleep(2500);
  const s = await screenWhere(t, 'surge', 'the screen has both rows', (x) => row(x, 'storm') !== undefined && row(x, 'calm') !== undefined);
  if (process.env.PGBUDGET_TEST_TOP_SCREEN) await writeFile(process.env.PGBUDGET_TEST_TOP_SCREEN, s + '\n');
  const lines = s.split('\n');
  t.match(lines[0], new RegExp(`^pgbudget top  ${admin} +\\d\\d:\\d\\d:\\d\\d  every 1s$`), 'the title');
  t.notOk(lines.some((l) => l.startsWith('!')), 'no error line');
  t.match(s, /^upstream  127\.0\.0\.1:\d+  server connections \d+ \/ cap 10  up$/m, 'the upstream against the cap');
  t.match(s, /^database  max_connections 20, 3 reserved, \d+ others: room for \d+/m, 'the database limit');
  t.match(s, /^SERVICE +BUDGET +HELD  WAIT    p50    p99  TMO\/s CONN\/s SURGE$/m, 'the header, whole in 80 columns');

  const storm = /^storm +\[([#+=.]+)\](>+) +(\d+)\/2 +(\d+) +(\S+) +(\S+) +(\S+) +(\S+) +(\S+)$/.exec(row(s, 'storm')!);
  t.ok(storm, `the storm's row parses: ${row(s, 'storm')}`);
  if (storm) {
    const [, inside, beyond, held, waiting, p50, p99, timeouts, connects, surge] = storm;
    t.notMatch(inside, /\./, 'its budget bar is full: no free cell');
    t.ok(beyond.length > 0, 'and the waiters beyond it');
    t.equal(Number(held), 2, 'it holds its budget');
    // Fewer than all but the 2 served, at moments: waiters time out after 2 s and connect again.
    t.ok(Number(waiting) > 0, `clients waiting: ${waiting}`);
    t.match(p50, /^(\d+ms|\d+\.\d+s|>.*)$/, 'a p50 wait');
    t.match(p99, /^(\d+ms|\d+\.\d+s|>.*)$/, 'a p99 wait');
    t.match(timeouts, /^(-|\d+(\.\d)?)$/, 'timeouts per second');
    t.match(connects, /^\d+(\.\d)?$/, 'the connect rate');
    t.equal(surge, 'SURGE', 'the surge flag');
  }
  t.match(row(s, 'calm'), /^calm +\[[#+=.]+\] +\d\/4 +0 .* no$/, 'the calm service: within its budget, nobody waiting, no surge');
  t.ok(lines.findIndex((l) => l.startsWith('storm ')) < lines.findIndex((l) => l.startsWith('calm ')), 'the storm first');
  t.match(lines[lines.length - 1], /^# in use .* q quits$/, 'the legend, unwrapped');
  t.ok(lines.every((l) => l.length <= 80), 'nothing wider than 80 columns');
  t.match(await paneState('surge'), /^0 0/, 'running, with the cursor hidden');

  await tmux('send-keys', '-t', 'surge', 'q');
  t.equal(await exitStatus('surge'), 0, 'q: exited 0');
  // The terminal turns \n into \r\n (ONLCR).
  t.match(await written('surge'), /\x1b\[0m\x1b\[\?25h\r\r?\nexit 0\r?\n$/, 'the cursor shown again, the last thing written');
  t.match(await screen('surge'), /^storm /m, 'the last frame stays on screen');
});

t.test('Ctrl-C quits too', async (t) => {
  await topSession(t, 'ctrl-c', ['--token-env', TOKEN_ENV]);
  await screenWhere(t, 'ctrl-c', 'a frame', (x) => row(x, 'storm') !== undefined);
  await tmux('send-keys', '-t', 'ctrl-c', 'C-c');
  t.equal(await exitStatus('ctrl-c'), 0, 'exited 0');
  t.match(await written('ctrl-c'), /\x1b\[0m\x1b\[\?25h\r\r?\nexit 0\r?\n$/, 'the cursor shown again');
});

t.test('--once: one plain frame for scripts and kubectl exec without -t', async (t) => {
  const r = await run(process.execPath, [cli, 'top', '--once', '--admin', admin, '--token-env', TOKEN_ENV], { env: { [TOKEN_ENV]: token } });
  t.equal(r.code, 0, r.stderr);
  t.notMatch(r.stdout, /\x1b/, 'no escape sequence');
  const lines = r.stdout.replace(/\n$/, '').split('\n');
  t.ok(lines.every((l) => l.length <= 80), 'within 80 columns');
  t.match(row(r.stdout, 'storm'), /^storm +\[[#+=]+\]>+ +2\/2 +\d+ /, 'the storm, at its budget, with waiters');
  t.ok(row(r.stdout, 'calm'), 'the calm service');
  t.match(row(r.stdout, 'pgbudget:he~'), /1\/1|0\/1/, "the headroom reading's own service");
  t.notMatch(r.stdout, /q quits|every 1s/, 'nothing said of keys or refreshes');
});

t.test('a wrong token: 401 on screen, retried until the token file is right', async (t) => {
  const tokenFile = path.join(outputDir, 'token');
  await writeFile(tokenFile, 'not-the-token\n');
  await topSession(t, 'wrong', ['--token-file', tokenFile]);
  const wrong = await screenWhere(t, 'wrong', 'the 401 on screen', (x) => /^! .* 401 /m.test(x));
  t.match(wrong, new RegExp(`^! ${admin}/status: 401 wrong bearer token$`, 'm'));
  t.notMatch(wrong, /not-the-token/, 'the token is not shown');
  await writeFile(tokenFile, `${token}\n`);
  const right = await screenWhere(t, 'wrong', 'the services once the token is right', (x) => row(x, 'storm') !== undefined);
  t.notMatch(right, /^!/m, 'the error is gone');
  await tmux('send-keys', '-t', 'wrong', 'q');

  const once = await run(process.execPath, [cli, 'top', '--once', '--admin', admin, '--token-env', 'PGBUDGET_TEST_TOP_WRONG'], {
    env: { PGBUDGET_TEST_TOP_WRONG: 'wrong' },
  });
  t.equal(once.code, 1, '--once with a wrong token exits 1');
  t.match(once.stdout, new RegExp(`^! ${admin}/status: 401 wrong bearer token$`, 'm'));
  const none = await run(process.execPath, [cli, 'top', '--once', '--admin', admin]);
  t.equal(none.code, 1);
  t.match(none.stdout.replace(/\n  /g, ' '), /401 a bearer token is required \(Authorization: Bearer <token>\) \(give the token: --token-env NAME or --token-file PATH\)/, 'without a token: said in full, over two lines');
});

t.test('an admin API that is not there: said, and exit 1 with --once', async (t) => {
  const closed = net.createServer();
  await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
  const port = (closed.address() as net.AddressInfo).port;
  await new Promise((r) => closed.close(r));
  const r = await run(process.execPath, [cli, 'top', '--once', '--admin', `127.0.0.1:${port}`, '--interval', '100']);
  t.equal(r.code, 1);
  t.match(r.stdout, new RegExp(`^! admin API unreachable: http://127\\.0\\.0\\.1:${port}/status: ECONNREFUSED$`, 'm'));
  const bad = await run(process.execPath, [cli, 'top', '--token-env', 'PGBUDGET_TEST_TOP_UNSET']);
  t.equal(bad.code, 2, 'a token that cannot be had stops the start');
  t.match(bad.stderr, /^pgbudget top: --token-env: the environment variable PGBUDGET_TEST_TOP_UNSET is not set$/m);
});
