// The leases in Redis: a counting semaphore per service and one for the cap,
// each a sorted set of lease holders scored by when the lease expires (in
// Redis's own clock, so instances' clocks never matter). Every decision is
// one Lua script, so it is atomic against every other instance's.
//
// Keys, all under `<keyPrefix>{<cluster>}:` (one hash slot):
//   instances        zset  instance -> expiry            (live instances)
//   info             hash  instance -> JSON              (host, pid, since)
//   cap              zset  lease -> expiry               (every lease)
//   capv             hash  instance -> its cap
//   lease:<service>  zset  lease -> expiry               (the service's leases)
//   budget:<service> hash  instance -> its budget (-1: a dry run)
//   demand:<service> hash  instance -> "held waiting oldestWaitMs"
//   pids             hash  instance -> its server connections' backend pids, "pid pid ..."
//                          (with headroom readings: the others' are not "other" connections)
// A lease is named `<instance>#<connection id>`, so `ZRANGE` of a set shows
// which instance holds what.
import { Redis } from 'ioredis';

/** The time in Redis (ms), the expired entries of a set dropped, and the least of the live instances' limits. */
const PRELUDE = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local p = ARGV[1]
local live = KEYS[1]
local function expire(key) redis.call('ZREMRANGEBYSCORE', key, '-inf', now) end
-- The smallest limit any live instance gives (negative: none); entries of
-- instances no longer live are dropped.
local function least(hash, own)
  local smallest = own
  local vals = redis.call('HGETALL', hash)
  for i = 1, #vals, 2 do
    if redis.call('ZSCORE', live, vals[i]) then
      local v = tonumber(vals[i + 1])
      if v and v >= 0 and (smallest < 0 or v < smallest) then smallest = v end
    else
      redis.call('HDEL', hash, vals[i])
    end
  end
  return smallest
end
expire(live)
`;

/**
 * ARGV: prefix, instance, lease, service, budget (-1: not enforced), cap, ttl.
 * Returns {granted 0|1, service leases, budget, all leases, cap}.
 */
const ACQUIRE = `${PRELUDE}
local lease, svc = ARGV[3], ARGV[4]
local budget, cap, ttl = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local capKey, leaseKey = p .. 'cap', p .. 'lease:' .. svc
expire(capKey)
expire(leaseKey)
if budget >= 0 then budget = least(p .. 'budget:' .. svc, budget) end
cap = least(p .. 'capv', cap)
local held, all = redis.call('ZCARD', leaseKey), redis.call('ZCARD', capKey)
if not redis.call('ZSCORE', leaseKey, lease) then
  if (budget >= 0 and held >= budget) or all >= cap then return {0, held, budget, all, cap} end
  held = held + 1
  all = all + 1
end
redis.call('ZADD', leaseKey, now + ttl, lease)
redis.call('ZADD', capKey, now + ttl, lease)
return {1, held, budget, all, cap}
`;

/**
 * ARGV: prefix, instance, ttl, JSON {cap, info, pids, services: [{n, b, h, w, o, m: [leases]}]}.
 * Renews every lease named; one that expired is taken again where there is
 * room, else it is lost; one of the instance's own that it does not name
 * goes. Publishes the instance's limits and demand.
 * Returns {cap, all leases, lost leases, [[service, budget, leases, [instance, "held waiting oldest", ...]], ...], live instances,
 * [instance, "pid pid ...", ...]}.
 */
const SYNC = `${PRELUDE}
local inst, ttl = ARGV[2], tonumber(ARGV[3])
local mine = inst .. '#'
local a = cjson.decode(ARGV[4])
redis.call('ZADD', live, now + ttl, inst)
redis.call('HSET', p .. 'info', inst, a.info)
least(p .. 'info', -1)
local capKey = p .. 'cap'
expire(capKey)
redis.call('HSET', p .. 'capv', inst, a.cap)
local cap = least(p .. 'capv', a.cap)
redis.call('HSET', p .. 'pids', inst, a.pids)
least(p .. 'pids', -1)
local lost, out = {}, {}
for _, s in ipairs(a.services) do
  local leaseKey = p .. 'lease:' .. s.n
  expire(leaseKey)
  redis.call('HSET', p .. 'budget:' .. s.n, inst, s.b)
  local budget = s.b
  if budget >= 0 then budget = least(p .. 'budget:' .. s.n, budget) end
  local demandKey = p .. 'demand:' .. s.n
  redis.call('HSET', demandKey, inst, s.h .. ' ' .. s.w .. ' ' .. s.o)
  -- A lease of this instance that it no longer names is stale (a call that
  -- timed out here and ran late there): it goes, so it takes no room.
  local named = {}
  for _, lease in ipairs(s.m) do named[lease] = true end
  for _, lease in ipairs(redis.call('ZRANGE', leaseKey, 0, -1)) do
    if string.sub(lease, 1, #mine) == mine and not named[lease] then
      redis.call('ZREM', leaseKey, lease)
      redis.call('ZREM', capKey, lease)
    end
  end
  for _, lease in ipairs(s.m) do
    if redis.call('ZSCORE', leaseKey, lease) or ((budget < 0 or redis.call('ZCARD', leaseKey) < budget) and redis.call('ZCARD', capKey) < cap) then
      redis.call('ZADD', leaseKey, now + ttl, lease)
      redis.call('ZADD', capKey, now + ttl, lease)
    else
      lost[#lost + 1] = lease
    end
  end
  least(demandKey, -1)
  out[#out + 1] = {s.n, budget, redis.call('ZCARD', leaseKey), redis.call('HGETALL', demandKey)}
end
return {cap, redis.call('ZCARD', capKey), lost, out, redis.call('ZCARD', live), redis.call('HGETALL', p .. 'pids')}
`;

/** ARGV: prefix, instance, lease, service. */
const RELEASE = `${PRELUDE}
redis.call('ZREM', p .. 'lease:' .. ARGV[4], ARGV[3])
redis.call('ZREM', p .. 'cap', ARGV[3])
return 1
`;

/** ARGV: prefix, instance. An instance that stops: its leases and entries go at once, not at their expiry. */
const LEAVE = `${PRELUDE}
local inst = ARGV[2]
local prefix = inst .. '#'
local function drop(key)
  for _, m in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    if string.sub(m, 1, #prefix) == prefix then redis.call('ZREM', key, m) end
  end
end
drop(p .. 'cap')
for _, svc in ipairs(cjson.decode(ARGV[3])) do
  drop(p .. 'lease:' .. svc)
  redis.call('HDEL', p .. 'budget:' .. svc, inst)
  redis.call('HDEL', p .. 'demand:' .. svc, inst)
end
redis.call('HDEL', p .. 'capv', inst)
redis.call('HDEL', p .. 'pids', inst)
redis.call('HDEL', p .. 'info', inst)
redis.call('ZREM', live, inst)
return 1
`;

export interface AcquireResult {
  granted: boolean;
  serviceLeases: number;
  budget: number;
  allLeases: number;
  cap: number;
}

export interface SyncService {
  name: string;
  /** This instance's budget; -1 when it is not enforced (a dry run). */
  budget: number;
  held: number;
  waiting: number;
  oldestWaitMs: number;
  leases: string[];
}

export interface PeerDemand {
  instance: string;
  held: number;
  waiting: number;
  oldestWaitMs: number;
}

export interface SyncedService {
  name: string;
  /** The budget in force: the least of the live instances' (-1: not enforced here). */
  budget: number;
  leases: number;
  demand: PeerDemand[];
}

export interface SyncResult {
  cap: number;
  allLeases: number;
  lost: string[];
  services: SyncedService[];
  /** Instances whose last sync is younger than the TTL, this one included. */
  liveInstances: number;
  /** The backend pids of the other live instances' server connections, as they last published them. */
  peerPids: number[];
}

type Script = (...args: (string | number)[]) => Promise<unknown>;

/** Redis commands counted by what they were for, for the metrics and the churn test. */
export type LeaseOp = 'acquire' | 'release' | 'sync' | 'nudge';

export class LeaseStore {
  private readonly live: string;
  readonly calls: Record<LeaseOp, number> = { acquire: 0, release: 0, sync: 0, nudge: 0 };

  constructor(
    private readonly redis: Redis,
    /** `<keyPrefix>{<cluster>}:` */
    readonly prefix: string,
    readonly instance: string,
  ) {
    this.live = `${prefix}instances`;
    redis.defineCommand('pgbudgetAcquire', { numberOfKeys: 1, lua: ACQUIRE });
    redis.defineCommand('pgbudgetSync', { numberOfKeys: 1, lua: SYNC });
    redis.defineCommand('pgbudgetRelease', { numberOfKeys: 1, lua: RELEASE });
    redis.defineCommand('pgbudgetLeave', { numberOfKeys: 1, lua: LEAVE });
  }

  leaseName(connId: number): string {
    return `${this.instance}#${connId}`;
  }

  async acquire(lease: string, service: string, budget: number, cap: number, ttlMs: number): Promise<AcquireResult> {
    this.calls.acquire++;
    const r = (await this.script('pgbudgetAcquire')(this.live, this.prefix, this.instance, lease, service, budget, cap, ttlMs)) as number[];
    return { granted: r[0] === 1, serviceLeases: r[1], budget: r[2], allLeases: r[3], cap: r[4] };
  }

  async release(lease: string, service: string): Promise<void> {
    this.calls.release++;
    await this.script('pgbudgetRelease')(this.live, this.prefix, this.instance, lease, service);
  }

  async sync(cap: number, info: string, services: SyncService[], ttlMs: number, pids: Iterable<number> = []): Promise<SyncResult> {
    this.calls.sync++;
    const payload = JSON.stringify({
      cap,
      info,
      pids: [...pids].join(' '),
      services: services.map((s) => ({ n: s.name, b: s.budget, h: s.held, w: s.waiting, o: Math.round(s.oldestWaitMs), m: s.leases })),
    });
    // cjson decodes an empty JSON array as an empty object: the script's ipairs walks neither.
    const r = (await this.script('pgbudgetSync')(this.live, this.prefix, this.instance, ttlMs, payload)) as [number, number, string[], [string, number, number, string[]][], number, string[]];
    return {
      cap: r[0],
      allLeases: r[1],
      lost: r[2],
      services: r[3].map(([name, budget, leases, flat]) => ({ name, budget, leases, demand: parseDemand(flat) })),
      liveInstances: r[4],
      peerPids: parsePids(r[5], this.instance),
    };
  }

  /** The channel on which an instance whose clients started to wait asks the others to sync now. */
  get nudgeChannel(): string {
    return `${this.prefix}nudge`;
  }

  /** Asks every instance of the cluster to sync now (its demand is published already). */
  async nudge(): Promise<void> {
    this.calls.nudge++;
    await this.redis.publish(this.nudgeChannel, this.instance);
  }

  /** Gives back every lease of this instance at once (a clean stop). */
  async leave(services: string[]): Promise<void> {
    await this.script('pgbudgetLeave')(this.live, this.prefix, this.instance, JSON.stringify(services));
  }

  private script(name: string): Script {
    return (this.redis as unknown as Record<string, Script>)[name].bind(this.redis);
  }
}

/** HGETALL's flat list of pid entries, instance, "pid pid ...", ..., without `self`'s. */
function parsePids(flat: string[], self: string): number[] {
  const out: number[] = [];
  for (let i = 0; i + 1 < flat.length; i += 2) {
    if (flat[i] === self) continue;
    for (const p of flat[i + 1].split(' ')) if (/^\d+$/.test(p)) out.push(Number(p));
  }
  return out;
}

/** HGETALL's flat list of demand entries: instance, "held waiting oldest", ... */
function parseDemand(flat: string[]): PeerDemand[] {
  const out: PeerDemand[] = [];
  for (let i = 0; i + 1 < flat.length; i += 2) {
    const [held, waiting, oldest] = flat[i + 1].split(' ').map(Number);
    out.push({ instance: flat[i], held: held || 0, waiting: waiting || 0, oldestWaitMs: oldest || 0 });
  }
  return out;
}
