// One budget across every replica: several real pgbudget processes (the
// CLI) in front of one PostgreSQL share service budgets and the cap through
// leases in a real Redis server that each test starts, stops, pauses and
// restarts itself. A sampler reads pg_stat_activity every 20 ms: what the
// database saw is what is asserted, against the budget and the cap.
import t from 'tap';
import pg from 'pg';
import { withCluster } from '../helpers/cluster.js';
import path from 'node:path';
import { psql, repoRoot, run, scrape, sleep, spawnProxy, until, type SpawnedProxy } from '../helpers/proxy.js';
import { partitionable, startRedis, type TestRedis } from '../helpers/redis.js';
import type { ProxySnapshot } from '../../src/types/snapshot.js';

const cluster = await withCluster(t, { maxConnections: 40, users: ['segmentation', 'web'] });

const TTL = 3000;

function config(redis: TestRedis, name: string, over: { budget?: number; cap?: number; expectedReplicas?: number; onRedisDown?: string; ttl?: number } = {}) {
  return {
    logLevel: 'info',
    upstream: { maxConnections: over.cap ?? 16 },
    coordination: {
      redis: { url: redis.url },
      cluster: name,
      leaseTtlMs: over.ttl ?? TTL,
      onRedisDown: over.onRedisDown ?? 'static',
      expectedReplicas: over.expectedReplicas ?? 4,
    },
    services: [
      { name: 'segmentation', match: { user: 'segmentation' }, poolMode: 'transaction', budget: over.budget ?? 8, queue: { maxWaiting: 500, timeoutMs: 120_000 } },
      { name: 'web', match: { user: 'web' }, poolMode: 'transaction', budget: 4, queue: { maxWaiting: 100, timeoutMs: 120_000 } },
    ],
  };
}

type Teardown = Parameters<typeof spawnProxy>[0];

/** `n` instances of the CLI sharing budgets through `redis` as cluster `name`, stopped at the end of `tt`. */
async function instances(tt: Teardown, n: number, redis: TestRedis, name: string, over: Parameters<typeof config>[2] = {}): Promise<SpawnedProxy[]> {
  const all = await Promise.all(Array.from({ length: n }, () => spawnProxy(tt, cluster, config(redis, name, over))));
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
  const proxies = await instances(t, 4, redis, 'storm');
  const watch = sampler();
  const callsBefore = await Promise.all(proxies.map(status));
  const [storms, web] = await Promise.all([
    Promise.all(proxies.map((p) => pgbench(p.port, 'segmentation', 100, 6, 'select pg_sleep(0.01);'))),
    pgbench(proxies[0].port, 'web', 3, 6, 'select 1;'),
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
  const callsAfter = await Promise.all(proxies.map(status));
  const calls = (op: 'acquire' | 'release' | 'sync') => callsAfter.reduce((n, s, i) => n + s.coordination!.calls[op] - callsBefore[i].coordination!.calls[op], 0);
  const total = storms.reduce((n, s) => n + s.transactions, 0) + web.transactions;
  t.comment(
    `storm: peak segmentation ${seen.maxSeg}/8, peak all ${seen.maxAll}/16, ${total - web.transactions} storm transactions, web ${web.transactions}; ` +
      `Redis calls acquire ${calls('acquire')} release ${calls('release')} sync ${calls('sync')}: ${(((calls('acquire') + calls('release') + calls('sync')) / total) * 1000).toFixed(1)} per 1,000 transactions`,
  );
});

/** The leases in Redis, read from Redis alone: per holder instance, for one set. */
async function leasesByInstance(redis: TestRedis, cluster: string, set: string): Promise<Map<string, number>> {
  const c = redis.client();
  try {
    const members = await c.zrangebyscore(`pgbudget:{${cluster}}:${set}`, Date.now(), '+inf');
    const out = new Map<string, number>();
    for (const m of members) {
      const inst = m.slice(0, m.lastIndexOf('#'));
      out.set(inst, (out.get(inst) ?? 0) + 1);
    }
    return out;
  } finally {
    c.disconnect();
  }
}

t.test('kill -9 of an instance mid-storm: its leases return within leaseTtlMs, the others get the room', async (t) => {
  const redis = await startRedis(t);
  const proxies = await instances(t, 3, redis, 'crash');
  const watch = sampler();
  const victimName = (await status(proxies[0])).coordination!.instance;
  const benches = proxies.map((p) => pgbench(p.port, 'segmentation', 40, 9, 'select pg_sleep(0.01);'));
  await until('the victim holds leases', async () => (await leasesByInstance(redis, 'crash', 'lease:segmentation')).has(victimName));
  await sleep(2000);
  const before = (await leasesByInstance(redis, 'crash', 'lease:segmentation')).get(victimName) ?? 0;
  t.ok(before > 0, `the victim holds ${before} of the 8 before it dies`);
  const c = redis.client();
  const scores = await c.zrange('pgbudget:{crash}:lease:segmentation', '0', '-1', 'WITHSCORES');
  c.disconnect();
  let lastExpiry = 0;
  for (let i = 0; i + 1 < scores.length; i += 2) if (scores[i].startsWith(`${victimName}#`)) lastExpiry = Math.max(lastExpiry, Number(scores[i + 1]));
  const killedAt = Date.now();
  proxies[0].proc.kill('SIGKILL');
  t.ok(lastExpiry - killedAt <= TTL, `its last lease expires ${lastExpiry - killedAt} ms after the kill, within leaseTtlMs (${TTL})`);
  await until('the victim leases gone', async () => !(await leasesByInstance(redis, 'crash', 'lease:segmentation')).has(victimName), TTL + 3000);
  const goneMs = Date.now() - killedAt;
  t.ok(goneMs <= TTL + 500, `its leases gone from Redis ${goneMs} ms after the kill (leaseTtlMs ${TTL}; a peer's sync drops them)`);
  await until('the survivors hold the whole budget', async () => (await held(proxies[1], 'segmentation')) + (await held(proxies[2], 'segmentation')) === 8, TTL + 3000);
  const roomMs = Date.now() - killedAt;
  t.ok(roomMs <= TTL + 1000, `the survivors hold all 8 ${roomMs} ms after the kill`);
  const [victim, ...survivors] = await Promise.all(benches);
  t.not(victim.code, 0, 'the victim instance pgbench lost its connections with it');
  for (const [i, s] of survivors.entries()) t.same([s.code, s.failed], [0, 0], `survivor ${i + 1}: ${s.transactions} transactions, none failed`);
  const seen = await watch.stop();
  t.ok(seen.maxSeg <= 8 && seen.maxAll <= 16, `never above the budget or the cap (peaks ${seen.maxSeg}/8, ${seen.maxAll}/16)`);
  t.comment(`kill -9: victim held ${before}; its leases gone after ${goneMs} ms; survivors at 8 after ${roomMs} ms; peaks ${seen.maxSeg}/8 and ${seen.maxAll}/16`);
});

/** Every instance's segmentation connections, by /status. */
async function heldEach(proxies: SpawnedProxy[]): Promise<number[]> {
  return Promise.all(proxies.map((p) => held(p, 'segmentation')));
}

for (const fault of ['stop', 'pause'] as const) {
  const what = fault === 'stop' ? 'Redis stopped mid-load, then started again (empty)' : 'Redis paused (SIGSTOP) for twice the TTL';
  t.test(`${what}: static shares hold the bounds, the instances rejoin`, async (t) => {
    const redis = await startRedis(t);
    const proxies = await instances(t, 4, redis, `fault-${fault}`);
    const watch = sampler();
    const benches = proxies.map((p) => pgbench(p.port, 'segmentation', 30, 12, 'select pg_sleep(0.01);'));
    const web = pgbench(proxies[1].port, 'web', 2, 12, 'select 1;');
    await sleep(2500);
    const up = watch.now;
    if (fault === 'stop') await redis.stop();
    else redis.pause();
    const faultAt = Date.now();
    await until('every instance down', async () => (await Promise.all(proxies.map(status))).every((s) => s.coordination?.up === false), 3000);
    t.ok(true, `every instance saw the fault within ${Date.now() - faultAt} ms`);
    // By then every instance has shrunk to its static share (8 / 4) and may have grown to it.
    await sleep(TTL + 500 - (Date.now() - faultAt));
    const shares: number[][] = [];
    for (let i = 0; i < 5; i++) {
      shares.push(await heldEach(proxies));
      await sleep(200);
    }
    t.ok(shares.every((row) => row.every((n) => n <= 2)), `each instance within its static share of 2: ${JSON.stringify(shares)}`);
    t.ok(shares.some((row) => row.reduce((a, b) => a + b, 0) >= 6), 'and the shares are used');
    const down = watch.now;
    await sleep(Math.max(0, 2 * TTL - (Date.now() - faultAt)));
    if (fault === 'stop') await redis.start();
    else redis.resume();
    const backAt = Date.now();
    await until('every instance rejoined', async () => (await Promise.all(proxies.map(status))).every((s) => s.coordination?.up === true), 5000);
    const rejoinMs = Date.now() - backAt;
    const leases = [...(await leasesByInstance(redis, `fault-${fault}`, 'lease:segmentation')).values()].reduce((a, b) => a + b, 0);
    t.ok(leases <= 8, `after rejoining, ${leases} segmentation leases in Redis`);
    const benched = await Promise.all(benches);
    for (const [i, s] of benched.entries()) t.same([s.code, s.failed], [0, 0], `instance ${i}: ${s.transactions} storm transactions, none failed`);
    t.equal((await web).code, 0, 'web kept working');
    const seen = await watch.stop();
    t.ok(seen.maxSeg <= 8, `segmentation never above 8 across the fault (peak ${seen.maxSeg}; ${up.maxSeg} before it, ${down.maxSeg} to the end of the fallback)`);
    t.ok(seen.maxAll <= 16, `never above the cap of 16 (peak ${seen.maxAll})`);
    t.comment(`${fault}: peaks ${seen.maxSeg}/8 and ${seen.maxAll}/16; static shares ${JSON.stringify(shares)}; rejoined ${rejoinMs} ms after Redis came back`);
  });
}

/**
 * 3 clients that each log in and run `select pg_sleep(0.05)` over and over
 * for `ms`: how long each login and each statement waited beyond its own
 * 50 ms (ascending), and how many failed.
 */
async function fewClients(url: string, ms: number): Promise<{ waits: number[]; errors: number }> {
  const waits: number[] = [];
  let errors = 0;
  const stopAt = Date.now() + ms;
  await Promise.all(
    Array.from({ length: 3 }, async () => {
      const c = new pg.Client({ connectionString: url });
      // The login waits too (its welcome comes from a server connection the first time).
      const connecting = Date.now();
      await c.connect();
      waits.push(Date.now() - connecting);
      while (Date.now() < stopAt) {
        const started = Date.now();
        try {
          await c.query('select pg_sleep(0.05)');
          waits.push(Date.now() - started - 50);
        } catch {
          errors++;
        }
      }
      await c.end();
    }),
  );
  return { waits: waits.sort((a, b) => a - b), errors };
}

t.test('fairness: one instance storms, another has 3 clients of the same service; the 3 are served within a bounded wait', async (t) => {
  const redis = await startRedis(t);
  const [storm, few] = await instances(t, 2, redis, 'fair', { expectedReplicas: 2 });
  const watch = sampler();
  const bench = pgbench(storm.port, 'segmentation', 100, 8, 'select pg_sleep(0.05);');
  await until('the storm holds all 8', async () => (await held(storm, 'segmentation')) === 8);
  const { waits, errors } = await fewClients(`postgres://segmentation@127.0.0.1:${few.port}/postgres`, 5000);
  const mid = await Promise.all([held(storm, 'segmentation'), held(few, 'segmentation')]);
  const s = await bench;
  const seen = await watch.stop();
  const p50 = waits[Math.floor(waits.length / 2)];
  const max = waits[waits.length - 1];
  t.equal(errors, 0, 'every query of the few succeeded');
  t.ok(waits.length >= 150, `the few ran ${waits.length} statements in 5 s`);
  t.ok(max <= 2500, `the longest wait of the few: ${max} ms (the first, before the storm gives back)`);
  t.ok(p50 <= 100, `their median wait: ${p50} ms`);
  t.same([s.code, s.failed], [0, 0], `the storm: ${s.transactions} transactions, none failed`);
  t.ok(seen.maxSeg <= 8, `never above 8 (peak ${seen.maxSeg})`);
  t.comment(`fairness: the few waited median ${p50} ms, max ${max} ms, over ${waits.length} statements; shares at the end storm/few ${mid.join('/')}; storm ${s.transactions} transactions`);
});

t.test("an idle holder gives way at once: another instance's client is served within a fast sync or two, not the holder's slow one", async (t) => {
  const redis = await startRedis(t);
  // Slow syncs every 3 s: the holder, with no waiters of its own, would see the other's demand only then.
  const [holder, other] = await instances(t, 2, redis, 'nudge', { expectedReplicas: 2, ttl: 9000 });
  const web = (p: SpawnedProxy) => `postgres://web@127.0.0.1:${p.port}/postgres`;
  // The holder takes all 4 of web's budget, then its clients leave: 4 idle server connections there.
  const clients = await Promise.all(
    Array.from({ length: 4 }, async () => {
      const c = new pg.Client({ connectionString: web(holder) });
      await c.connect();
      await c.query('begin');
      return c;
    }),
  );
  t.equal(await held(holder, 'web'), 4, 'the holder holds the whole budget');
  for (const c of clients) {
    await c.query('commit'); // a client that leaves inside a transaction would take its server connection with it
    await c.end();
  }
  t.equal((await status(holder)).services.find((x) => x.name === 'web')!.serverConnections.idle, 4, 'all 4 idle there');
  // Right after one of the holder's slow syncs: its next is about 3 s away.
  const syncs = (await status(holder)).coordination!.calls.sync;
  await until('a sync of the holder', async () => (await status(holder)).coordination!.calls.sync > syncs, 5000);
  const started = Date.now();
  const c = new pg.Client({ connectionString: web(other) });
  await c.connect(); // its welcome needs a server connection: it waits here
  t.equal((await c.query('select 1 as one')).rows[0].one, 1);
  const waited = Date.now() - started;
  await c.end();
  const nudges = (await status(other)).coordination!.calls.nudge;
  t.ok(waited < 1500, `served after ${waited} ms (the holder's next slow sync was about 3000 ms away)`);
  t.ok(nudges >= 1, `the other instance nudged (${nudges})`);
  t.ok((await held(holder, 'web')) <= 3, 'the holder gave a connection back');
  t.comment(`nudge: a client of the other instance waited ${waited} ms for the idle holder's connection, ${nudges} nudge(s)`);
});

t.test("upstream.maxConnections auto: an instance's headroom reading does not count the other instances' connections as others", async (t) => {
  const redis = await startRedis(t);
  const auto = (name: string) => ({
    ...config(redis, name, { expectedReplicas: 2 }),
    upstream: { maxConnections: 'auto', autoMargin: 2 },
    headroom: { user: 'web', database: 'postgres', intervalMs: 200 },
  });
  const [a, b] = await Promise.all([spawnProxy(t, cluster, auto('auto')), spawnProxy(t, cluster, auto('auto'))]);
  for (const p of [a, b]) await until('coordination up', async () => (await status(p)).coordination?.up === true);
  const others = async (p: SpawnedProxy) => (await status(p)).database?.reading?.otherConnections ?? -1;
  await until('both read the database', async () => (await others(a)) >= 0 && (await others(b)) >= 0);
  // A takes 6 server connections and keeps them.
  const clients = await Promise.all(
    Array.from({ length: 6 }, async () => {
      const c = new pg.Client({ connectionString: `postgres://segmentation@127.0.0.1:${a.port}/postgres` });
      c.on('error', () => undefined); // the instances stop at the end of the test, maybe before the clients
      await c.connect();
      await c.query('begin');
      return c;
    }),
  );
  t.equal(await held(a, 'segmentation'), 6, 'A holds 6');
  // B's readings see them; once A's next sync has published their pids, they are pgbudget's, not others'.
  const direct = new pg.Client({ connectionString: cluster.url() });
  t.teardown(() => direct.end().catch(() => undefined));
  await direct.connect(); // the one connection that is not pgbudget's: it must count
  // Settled: a second of B's readings in a row (B syncs every second) at 1. Until each instance has
  // published its newest connections and B has synced since, they count as others': the cap errs low.
  let streak = 0;
  await until('B counts the direct connection only, for a second', async () => {
    streak = (await others(b)) === 1 ? streak + 1 : 0;
    if (streak < 5) await sleep(200);
    return streak >= 5;
  }, 10_000);
  const seen: number[] = [];
  for (let i = 0; i < 10; i++) {
    seen.push(await others(b));
    await sleep(200);
  }
  t.ok(
    seen.every((n) => n === 1),
    `B counts the direct connection, not A's 6 nor A's reading (readings ${seen.join(' ')})`,
  );
  const snap = await status(b);
  const r = snap.database!.reading!;
  t.equal(snap.upstream.maxConnections, r.maxConnections - r.superuserReservedConnections - r.reservedConnections - r.otherConnections - 2, "B's auto cap leaves out only the others and the margin");
  for (const c of clients) await c.end();
});

t.test('churn: Redis calls follow server connection opens, not transactions', async (t) => {
  const redis = await startRedis(t);
  const proxies = await instances(t, 2, redis, 'churn', { expectedReplicas: 2 });
  const callsOf = async () => {
    const snaps = await Promise.all(proxies.map(status));
    return {
      opened: snaps.reduce((n, s) => n + (s.services.find((x) => x.name === 'web')?.serversOpened ?? 0), 0),
      acquire: snaps.reduce((n, s) => n + s.coordination!.calls.acquire, 0),
      release: snaps.reduce((n, s) => n + s.coordination!.calls.release, 0),
      sync: snaps.reduce((n, s) => n + s.coordination!.calls.sync, 0),
    };
  };
  const before = await redis.commandCounts();
  const start = await callsOf();
  const runs = await Promise.all(proxies.map((p) => pgbench(p.port, 'web', 2, 6, 'select 1;')));
  const after = await redis.commandCounts();
  const end = await callsOf();
  const transactions = runs.reduce((n, r) => n + r.transactions, 0);
  const scripts = (after.evalsha ?? 0) + (after.eval ?? 0) - (before.evalsha ?? 0) - (before.eval ?? 0);
  const opened = end.opened - start.opened;
  const calls = { acquire: end.acquire - start.acquire, release: end.release - start.release, sync: end.sync - start.sync };
  t.ok(transactions > 5000, `${transactions} transactions`);
  t.ok(calls.acquire <= opened + 2, `${calls.acquire} acquires for ${opened} server connections opened`);
  // A sync every leaseTtlMs / 3 per instance for the 6 s, a few more (every 100 ms) while pgbench's clients log in and queue.
  t.ok(calls.sync <= 2 * (Math.ceil(6000 / (TTL / 3)) + 6), `${calls.sync} syncs`);
  const per1000 = (scripts / transactions) * 1000;
  t.ok(per1000 < 1, `${scripts} Redis script calls for ${transactions} transactions: ${per1000.toFixed(3)} per 1,000`);
  t.comment(`churn: ${transactions} transactions, ${opened} server connections opened, Redis calls acquire ${calls.acquire} release ${calls.release} sync ${calls.sync}; ${scripts} scripts run in Redis (commandstats): ${per1000.toFixed(3)} per 1,000 transactions`);
});

t.test('the cluster view: /status, the metrics and Redis alone; a budget lowered on one instance applies to all', async (t) => {
  const redis = await startRedis(t);
  const [a, b] = await instances(t, 2, redis, 'view', { expectedReplicas: 2 });
  const watch = sampler();
  const stormA = pgbench(a.port, 'segmentation', 30, 12, 'select pg_sleep(0.02);');
  const stormB = pgbench(b.port, 'segmentation', 5, 12, 'select pg_sleep(0.02);');
  await until('both hold some', async () => (await held(a, 'segmentation')) > 0 && (await held(b, 'segmentation')) > 0);
  await sleep(500);
  const [sa, sb] = await Promise.all([status(a), status(b)]);
  const ca = sa.coordination!;
  const segA = ca.services.find((s) => s.name === 'segmentation')!;
  t.equal(ca.up, true, '/status: coordination up');
  t.equal(segA.clusterBudget, 8, '/status: the cluster budget');
  t.ok(segA.clusterLeases <= 8 && segA.clusterLeases >= segA.leases && segA.leases > 0, `/status: ${segA.clusterLeases} leases in the cluster, ${segA.leases} of them this instance's`);
  t.same(
    segA.peers.map((p) => p.instance),
    [sb.coordination!.instance],
    "/status: the other instance's demand, by its name",
  );
  const body = (await scrape(a.adminPort)).body;
  for (const name of ['pgbudget_coordination_up{cluster="view"} 1', 'pgbudget_cluster_budget_connections{service="segmentation"} 8', 'pgbudget_cluster_leases{service="segmentation"}', 'pgbudget_cluster_instance_leases{service="segmentation"}', 'pgbudget_cluster_peer_waiting_clients{service="segmentation"}', 'pgbudget_cluster_cap_connections 16', 'pgbudget_coordination_redis_calls_total{op="sync"}']) {
    t.ok(body.includes(name), `metrics: ${name}`);
  }
  // Redis alone: which instance holds what, and who they are.
  const byInstance = await leasesByInstance(redis, 'view', 'lease:segmentation');
  t.same([...byInstance.keys()].sort(), [ca.instance, sb.coordination!.instance].sort(), 'Redis alone: the leases name their instances');
  const c = redis.client();
  const info = await c.hgetall('pgbudget:{view}:info');
  t.equal(JSON.parse(info[ca.instance]).pid, a.proc.pid, "Redis alone: an instance's host and pid");
  const budgets = await c.hgetall('pgbudget:{view}:budget:segmentation');
  t.same(Object.values(budgets), ['8', '8'], "Redis alone: each instance's budget");
  c.disconnect();

  // pgbudget top, once, against one instance: the cluster line and each service across the cluster.
  const top = await run(process.execPath, [path.join(repoRoot, 'dist', 'cli.js'), 'top', '--once', '--admin', `127.0.0.1:${a.adminPort}`]);
  t.equal(top.code, 0, 'pgbudget top --once');
  t.match(top.stdout, /^cluster +view +2 instances +leases \d+ \/ cap 16 +up$/m, 'top: the cluster line');
  t.match(top.stdout, /^segmentation +\d\/8 in the cluster, \d here \(may hold \d\)/m, 'top: segmentation across the cluster');
  t.comment(top.stdout);

  // One instance's file lowers the budget: every instance keeps to the smaller one.
  await a.writeConfig({ ...config(redis, 'view', { expectedReplicas: 2 }), services: config(redis, 'view').services.map((s) => (s.name === 'segmentation' ? { ...s, budget: 4 } : s)) });
  a.proc.kill('SIGHUP');
  await b.waitForLog(/disagree on budgets/, 5000);
  t.ok(true, 'the other instance logs that the files disagree');
  await until('both at the smaller budget', async () => (await Promise.all([status(a), status(b)])).every((s) => s.coordination!.services.find((x) => x.name === 'segmentation')!.clusterBudget === 4), 5000);
  await until('the cluster within 4', async () => (await held(a, 'segmentation')) + (await held(b, 'segmentation')) <= 4, 5000);
  const afterLower = sampler();
  await sleep(1500);
  const lowered = await afterLower.stop();
  t.ok(lowered.maxSeg <= 4, `once settled, never above the smaller budget of 4 (peak ${lowered.maxSeg})`);
  await b.writeConfig({ ...config(redis, 'view', { expectedReplicas: 2 }), services: config(redis, 'view').services.map((s) => (s.name === 'segmentation' ? { ...s, budget: 4 } : s)) });
  b.proc.kill('SIGHUP');
  await b.waitForLog(/agree on budgets again/, 5000);
  t.ok(true, 'and that they agree again once its file says the same');
  const [ra, rb] = await Promise.all([stormA, stormB]);
  t.same([ra.code, ra.failed, rb.code, rb.failed], [0, 0, 0, 0], `both storms served: ${ra.transactions} and ${rb.transactions} transactions`);
  const seen = await watch.stop();
  t.ok(seen.maxSeg <= 8, `never above 8 (peak ${seen.maxSeg})`);
});

t.test('hold: while Redis is down an instance keeps what it holds and opens nothing new', async (t) => {
  const redis = await startRedis(t);
  const [a] = await instances(t, 1, redis, 'hold', { onRedisDown: 'hold', expectedReplicas: 1 });
  /** 4 web clients at once, each a 0.2 s statement; how many succeeded. */
  const webBurst = async () => {
    const results = await Promise.allSettled(
      Array.from({ length: 4 }, async () => {
        const c = new pg.Client({ connectionString: `postgres://web@127.0.0.1:${a.port}/postgres` });
        await c.connect();
        try {
          await c.query('select pg_sleep(0.2)');
        } finally {
          await c.end();
        }
      }),
    );
    return results.filter((r) => r.status === 'fulfilled').length;
  };
  const webOpened = async () => (await status(a)).services.find((s) => s.name === 'web')!.serversOpened;
  const storm = pgbench(a.port, 'segmentation', 20, 8, 'select pg_sleep(0.01);');
  await until('the storm holds 8', async () => (await held(a, 'segmentation')) === 8);
  t.equal(await webBurst(), 4, 'web: 4 statements at once');
  t.equal(await held(a, 'web'), 4, 'web holds 4 server connections, idle now');
  await redis.stop();
  await until('down', async () => (await status(a)).coordination?.up === false, 3000);
  const openedAtDown = await webOpened();
  // Two of web's idle server connections end (killed on the server): hold opens none in their place.
  await cluster.query(`select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'pgbudget:web' limit 2`);
  await until('web down to 2', async () => (await held(a, 'web')) === 2, 3000);
  t.equal(await webBurst(), 4, 'web: 4 statements at once still succeed, on the 2 it kept');
  t.equal(await held(a, 'web'), 2, 'web still holds 2');
  t.equal(await webOpened(), openedAtDown, 'and opened no server connection while Redis was down');
  const seen: number[] = [];
  for (let i = 0; i < 10; i++) {
    seen.push(await held(a, 'segmentation'));
    await sleep(150);
  }
  t.ok(seen.every((n) => n === 8), `segmentation keeps its 8 (${seen.join(' ')})`);
  await redis.start();
  await until('up again', async () => (await status(a)).coordination?.up === true, 5000);
  t.equal(await webBurst(), 4, 'web after Redis is back');
  t.equal(await held(a, 'web'), 4, 'web grows to 4 again');
  const r = await storm;
  t.same([r.code, r.failed], [0, 0], `the storm: ${r.transactions} transactions, none failed`);
});

t.test("the cap across instances: one instance's storm does not starve another instance's other service", async (t) => {
  const redis = await startRedis(t);
  const [storm, other] = await instances(t, 2, redis, 'capfair', { cap: 8, expectedReplicas: 2 });
  const watch = sampler();
  const bench = pgbench(storm.port, 'segmentation', 100, 8, 'select pg_sleep(0.05);');
  await until('the storm holds the whole cap', async () => (await held(storm, 'segmentation')) === 8);
  const { waits, errors } = await fewClients(`postgres://web@127.0.0.1:${other.port}/postgres`, 5000);
  const shares = [await held(storm, 'segmentation'), await held(other, 'web')];
  const s = await bench;
  const seen = await watch.stop();
  const max = waits[waits.length - 1];
  t.equal(errors, 0, 'every web statement succeeded');
  t.ok(waits.length >= 150, `web ran ${waits.length} statements`);
  t.ok(max <= 2500, `web's longest wait: ${max} ms`);
  t.same([s.code, s.failed], [0, 0], `the storm: ${s.transactions} transactions, none failed`);
  t.ok(seen.maxAll <= 8, `never above the cap of 8 (peak ${seen.maxAll})`);
  t.comment(`cap across instances: web waited median ${waits[Math.floor(waits.length / 2)]} ms, max ${max} ms; at the end segmentation/web ${shares.join('/')}; peak ${seen.maxAll}/8`);
});

t.test('a partition: the instance cut off from Redis is within its static share before its leases can expire; the others then use the room', async (t) => {
  const redis = await startRedis(t);
  const relay = await partitionable(t, redis);
  const base = config(redis, 'part', { expectedReplicas: 4 });
  const cutOff = await spawnProxy(t, cluster, { ...base, coordination: { ...base.coordination, redis: { url: relay.url } } });
  const [other] = await instances(t, 1, redis, 'part', { expectedReplicas: 4 });
  await until('the cut-off instance up', async () => (await status(cutOff)).coordination?.up === true);
  const watch = sampler();
  const benches = [cutOff, other].map((p) => pgbench(p.port, 'segmentation', 40, 13, 'select pg_sleep(0.01);'));
  await until('both share the budget', async () => (await held(cutOff, 'segmentation')) >= 3 && (await held(other, 'segmentation')) >= 3);
  const before = await held(cutOff, 'segmentation');
  const early = sampler();
  relay.cut();
  const cutAt = Date.now();
  await until('the cut-off instance down', async () => (await status(cutOff)).coordination?.up === false, TTL);
  const downMs = Date.now() - cutAt;
  // Its last renewal was at most a fast sync before the cut: its leases stand until about cutAt + TTL.
  await sleep(TTL - 600 - (Date.now() - cutAt));
  const beforeExpiry = await early.stop();
  const shrunk = await held(cutOff, 'segmentation');
  t.ok(shrunk <= 2, `the cut-off instance holds ${shrunk} (it held ${before}), within its static share of 2, before its leases can expire`);
  t.ok(beforeExpiry.maxSeg <= 8, `until then the database never saw more than the budget (peak ${beforeExpiry.maxSeg})`);
  await until('the other instance uses the room', async () => (await held(other, 'segmentation')) >= 7, TTL + 3000);
  const during = [await held(cutOff, 'segmentation'), await held(other, 'segmentation')];
  t.ok(during[0] <= 2, `cut off: ${during[0]} (static share 2); the other: ${during[1]}`);
  relay.heal();
  const healedAt = Date.now();
  await until('rejoined', async () => (await status(cutOff)).coordination?.up === true, 5000);
  await until('back within the budget', async () => (await held(cutOff, 'segmentation')) + (await held(other, 'segmentation')) <= 8, 5000);
  const settleMs = Date.now() - healedAt;
  const after = sampler();
  await sleep(1500);
  const healed = await after.stop();
  t.ok(healed.maxSeg <= 8, `once rejoined, within the budget again (peak ${healed.maxSeg}, ${settleMs} ms after the heal)`);
  const [a, b] = await Promise.all(benches);
  t.same([b.code, b.failed], [0, 0], `the other instance: ${b.transactions} transactions, none failed`);
  t.comment(`the cut-off instance: ${a.transactions} transactions, ${a.failed} failed, exit ${a.code}`);
  const seen = await watch.stop();
  t.ok(seen.maxSeg <= 8 + 2, `at most the budget plus the cut-off instance's static share (peak ${seen.maxSeg})`);
  t.comment(`partition: down after ${downMs} ms; held ${before} -> ${shrunk} before its leases could expire (peak ${beforeExpiry.maxSeg}/8 until then); during ${during.join('/')}; overall peak ${seen.maxSeg} (bound 8 + 2); back within 8 ${settleMs} ms after the heal`);
});

t.test('a Redis that wants a password: the URL from urlEnv; a wrong one is Redis down (the fallback), never a crash', async (t) => {
  const redis = await startRedis(t, { password: 's3cret' });
  const base = config(redis, 'auth', { expectedReplicas: 1 });
  process.env.PGBUDGET_TEST_REDIS_URL = `redis://:s3cret@127.0.0.1:${redis.port}`;
  process.env.PGBUDGET_TEST_REDIS_URL_WRONG = `redis://:wrong@127.0.0.1:${redis.port}`;
  t.teardown(() => {
    delete process.env.PGBUDGET_TEST_REDIS_URL;
    delete process.env.PGBUDGET_TEST_REDIS_URL_WRONG;
  });
  const good = await spawnProxy(t, cluster, { ...base, coordination: { ...base.coordination, redis: { urlEnv: 'PGBUDGET_TEST_REDIS_URL' } } });
  await until('up with the password', async () => (await status(good)).coordination?.up === true, 5000);
  const wrong = await spawnProxy(t, cluster, { ...base, coordination: { ...base.coordination, cluster: 'auth-wrong', redis: { urlEnv: 'PGBUDGET_TEST_REDIS_URL_WRONG' } } });
  await wrong.waitForLog(/coordination down: Redis cannot be reached/, 5000);
  const s = (await status(wrong)).coordination!;
  t.equal(s.up, false, 'a wrong password: down');
  t.match(s.lastError ?? '', /WRONGPASS|NOAUTH|invalid/i, `with Redis's own words: ${s.lastError}`);
  t.ok((await scrape(wrong.adminPort)).body.includes('pgbudget_coordination_up{cluster="auth-wrong"} 0'), 'pgbudget_coordination_up 0');
  // Static fallback with one expected replica: the whole budget, once leaseTtlMs has passed.
  const r = await psql(`postgres://segmentation@127.0.0.1:${wrong.port}/postgres`, 'select 40 + 2');
  t.equal(r.stdout.trim(), '42', 'and it serves, within the static share');
  t.equal(wrong.proc.exitCode, null, 'still running');
});
