// A real Prometheus server (the binary of Debian's `prometheus` package) for
// integration tests: its config and TSDB in a temporary directory of its own,
// a port of its own on 127.0.0.1, stopped and removed at teardown. Plus
// promtool, and the few HTTP API calls the tests make.
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import { run, sleep, type RunResult } from './proxy.js';

interface Teardown {
  teardown(fn: () => unknown): void;
}

export interface ScrapeJob {
  name: string;
  /** host:port, scraped at /metrics */
  targets: string[];
}

export interface PrometheusOptions {
  jobs: ScrapeJob[];
  /** absolute paths */
  ruleFiles: string[];
  /** scrape and evaluation interval, default 1 */
  intervalSeconds?: number;
}

/** One series of an instant vector. */
export interface Sample {
  metric: Record<string, string>;
  value: [number, string];
}

export interface ActiveAlert {
  labels: Record<string, string>;
  annotations: Record<string, string>;
  state: 'pending' | 'firing';
  value: string;
}

export interface RuleGroup {
  name: string;
  file: string;
  /** RFC 3339 */
  lastEvaluation: string;
  rules: { name: string; type: 'alerting' | 'recording'; health: 'ok' | 'err' | 'unknown'; lastError?: string }[];
}

export interface RunningPrometheus {
  url: string;
  /** An instant query at the current time; rejects on a query error. */
  query(expr: string): Promise<Sample[]>;
  alerts(): Promise<ActiveAlert[]>;
  rules(): Promise<RuleGroup[]>;
  labelValues(label: string, match: string): Promise<string[]>;
}

export function promtool(args: string[]): Promise<RunResult> {
  return run('promtool', args, { timeoutMs: 30_000 });
}

/**
 * A port below the ephemeral range (32768 and up on Linux), so that no
 * outgoing connection takes it between this probe and Prometheus' bind.
 */
export async function probePort(): Promise<number> {
  for (;;) {
    const port = 20000 + Math.floor(Math.random() * 12768);
    const free = await new Promise<boolean>((resolve) => {
      const server = net.createServer();
      server.once('error', () => resolve(false));
      server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
    });
    if (free) return port;
  }
}

async function api<T>(url: string): Promise<T> {
  const res = await fetch(url);
  const body = (await res.json()) as { status: string; data: T; error?: string };
  if (body.status !== 'success') throw new Error(`${url}: ${body.error ?? res.status}`);
  return body.data;
}

const START_ATTEMPTS = 4;

/** Starts Prometheus and waits until it is ready; stopped and removed at teardown. */
export async function startPrometheus(t: Teardown, opts: PrometheusOptions): Promise<RunningPrometheus> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'pgbudget-prometheus-'));
  const configFile = path.join(dir, 'prometheus.yml');
  const interval = `${opts.intervalSeconds ?? 1}s`;
  await writeFile(
    configFile,
    stringify({
      global: { scrape_interval: interval, scrape_timeout: interval, evaluation_interval: interval },
      rule_files: opts.ruleFiles,
      scrape_configs: opts.jobs.map((j) => ({ job_name: j.name, static_configs: [{ targets: j.targets }] })),
    }),
  );
  let stop = async () => {};
  t.teardown(async () => {
    await stop();
    await rm(dir, { recursive: true, force: true });
  });

  for (let attempt = 1; ; attempt++) {
    const port = await probePort();
    const proc = spawn(
      'prometheus',
      [
        `--config.file=${configFile}`,
        `--storage.tsdb.path=${path.join(dir, 'data')}`,
        `--web.listen-address=127.0.0.1:${port}`,
        '--log.level=warn',
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let stderr = '';
    proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
    let gone = false;
    void exited.then(() => (gone = true));
    stop = async () => {
      if (gone) return;
      proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    };

    const url = `http://127.0.0.1:${port}`;
    const deadline = Date.now() + 20_000;
    while (!gone && Date.now() < deadline) {
      const ready = await fetch(`${url}/-/ready`).then(
        (r) => r.ok,
        () => false,
      );
      if (ready) {
        return {
          url,
          query: async (expr) =>
            (await api<{ result: Sample[] }>(`${url}/api/v1/query?query=${encodeURIComponent(expr)}`)).result,
          alerts: async () => (await api<{ alerts: ActiveAlert[] }>(`${url}/api/v1/alerts`)).alerts,
          rules: async () => (await api<{ groups: RuleGroup[] }>(`${url}/api/v1/rules`)).groups,
          labelValues: (label, match) =>
            api<string[]>(`${url}/api/v1/label/${encodeURIComponent(label)}/values?match[]=${encodeURIComponent(match)}`),
        };
      }
      await sleep(100);
    }
    await stop();
    if (!/address already in use/.test(stderr) || attempt >= START_ATTEMPTS) {
      throw new Error(`prometheus did not become ready on port ${port} (attempt ${attempt}):\n${stderr}`);
    }
  }
}
