// One budget across every replica: several real pgbudget processes (the
// CLI) in front of one PostgreSQL share service budgets and the cap through
// leases in a real Redis server that each test starts, stops, pauses and
// restarts itself. A sampler reads pg_stat_activity every 20 ms: what the
// database saw is what is asserted, against the budget and the cap.
import t from 'tap';
import pg from 'pg';
import { withCluster } from '../helpers/cluster.js';
import { run, scrape, sleep, spawnProxy, until, type SpawnedProxy } from '../helpers/proxy.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import type { ProxySnapshot } from '../../src/types/snapshot.js';

const cluster = await withCluster(t, { maxConnections: 40, users: ['segmentation', 'web'] });

const TTL = 3000;

function config(redis: TestRedis, name: string, over: { budget?: number; cap?: number; expectedReplicas?: number; onRedisDown?: string } = {}) {
  return {
    logLevel: 'info',
    upstream: { maxConnections: over.cap ?? 16 },
    coordination: {
      redis: { url: redis.url },
      cluster: name,
      leaseTtlMs: TTL,
      onRedisDown: over.onRedisDown ?? 'static',
      expectedReplicas: over.expectedReplicas ?? 4,
    },
    services: [
      { name: 'segmentation', match: { user: 'segmentation' }, poolMode: 'transaction', budget: over.budget ?? 8, queue: { maxWaiting: 500, timeoutMs: 120_000 } },
      { name: 'web', match: { user: 'web' }, poolMode: 'transaction', budget: 4, queue: { maxWaiting: 100, timeoutMs: 120_000 } },
    ],
  };
}

async function instances(n: number, redis: TestRedis, name: string, over: Parameters<typeof config>[2] = {}): Promise<SpawnedProxy[]> {
  const all = await Promise.all(Array.from({ length: n }, () => spawnProxy(t, cluster, config(redis, name, over))));
  for (const p of all) await until('coordination up', async () => (await status(p)).coordination?.up === true);
  return all;
}

async function status(p: SpawnedProxy): Promise<ProxySnapshot> {
  return JSON.parse((await scrape(p.adminPort, '/status')).body) as ProxySnapshot;
}

/** The service's server connections one instance holds, by its /status. */
export async function held(p: SpawnedProxy, service: string): Promise<number> {
  return (await status(p)).services.find((s) => s.name === service)?.serverConnections.total ?? 0;
}

/**
 * pg_stat_activity every 20 ms over a direct connection: the most
 * `segmentation` backends and pgbudget backends in all seen at once, and
 * an optional check run on every sample.
 */
function sampler() {
  let maxSeg = 0;
  let maxAll = 0;
  let samples = 0;
  let running = true;
  const done = (async () => {
    const c = new pg.Client({ connectionString: cluster.url() });
    await c.connect();
    while (running) {
      const r = await c.query(
        `select count(*) filter (where application_name = 'pgbudget:segmentation')::int as seg,
                count(*) filter (where application_name like 'pgbudget:%')::int as "all"
           from pg_stat_activity`,
      );
      maxSeg = Math.max(maxSeg, r.rows[0].seg);
      maxAll = Math.max(maxAll, r.rows[0].all);
      samples++;
      await sleep(20);
    }
    await c.end();
  })();
  return {
    get now() {
      return { maxSeg, maxAll, samples };
    },
    async stop() {
      running = false;
      await done;
      return { maxSeg, maxAll, samples };
    },
  };
}

interface Bench {
  transactions: number;
  failed: number;
  code: number | null;
  stderr: string;
}

/** pgbench with a custom script for `seconds`, `clients` connections to `port` as `user`. */
async function pgbench(port: number, user: string, clients: number, seconds: number, sql: string): Promise<Bench> {
  const script = `/tmp/pgbudget-coord-${process.pid}-${Math.random().toString(36).slice(2)}.sql`;
  const { writeFile, rm } = await import('node:fs/promises');
  await writeFile(script, sql + '\n');
  try {
    const r = await run('pgbench', ['-n', '-c', String(clients), '-j', '2', '-T', String(seconds), '-f', script, '-h', '127.0.0.1', '-p', String(port), '-U', user, 'postgres'], {
      timeoutMs: (seconds + 120) * 1000,
    });
    const transactions = Number(/number of transactions actually processed: (\d+)/.exec(r.stdout)?.[1] ?? 0);
    const failed = Number(/number of failed transactions: (\d+)/.exec(r.stdout)?.[1] ?? 0);
    return { transactions, failed, code: r.code, stderr: r.stderr };
  } finally {
    await rm(script, { force: true });
  }
}

t.test('a storm through 4 instances: 8 for segmentation and 16 in all, never more, every query served', async (t) => {
  const redis = await startRedis(t);
  const proxies = await instances(4, redis, 'storm');
  const watch = sampler();
  const [storms, web] = await Promise.all([
    Promise.all(proxies.map((p) => pgbench(p.port, 'segmentation', 100, 8, 'select pg_sleep(0.01);'))),
    pgbench(proxies[0].port, 'web', 3, 8, 'select 1;'),
  ]);
  const seen = await watch.stop();
  for (const [i, s] of storms.entries()) {
    t.equal(s.code, 0, `pgbench through instance ${i} exited 0 ${s.stderr.slice(0, 300)}`);
    t.equal(s.failed, 0, `instance ${i}: ${s.transactions} storm transactions, none failed`);
    t.ok(s.transactions > 0, `instance ${i} served its storm`);
  }
  t.equal(web.code, 0, 'web pgbench exited 0');
  t.ok(web.transactions > 100, `web kept working: ${web.transactions} transactions`);
  t.ok(seen.samples > 100, `${seen.samples} samples of pg_stat_activity`);
  t.ok(seen.maxSeg <= 8, `segmentation never above its budget of 8 (peak ${seen.maxSeg})`);
  t.ok(seen.maxAll <= 16, `all services never above the cap of 16 (peak ${seen.maxAll})`);
  t.ok(seen.maxSeg >= 6, `the storm used the budget (peak ${seen.maxSeg})`);
  t.comment(`storm: peak segmentation ${seen.maxSeg}/8, peak all ${seen.maxAll}/16, ${storms.reduce((n, s) => n + s.transactions, 0)} storm transactions, web ${web.transactions}`);
});
