--[[
  tn_put.lua — copy one tenant's quota into one queue, if it is newer (TenantRegistry).

  KEYS[1..12]  the shared layout (lib_base.lua)
  KEYS[13] <prefix>:{<queue>}:tn:<tenant>  HASH  the tenant in the queue (prelude.lua)
  KEYS[14] <prefix>:{<queue>}:tenants      ZSET  index of the tenants set up in the queue
  KEYS[15] <prefix>:{<queue>}:tn-run:<tenant>, KEYS[16] tn-tk:<tenant> (SETs), KEYS[17]
           parked:t:<tenant> (ZSET): its running jobs, ticket holders and lane
  KEYS[18] <prefix>:{<queue>}:tenancy      HASH  how the queue's processes enable tenancy
           (quantum, fair '1' | '0', quotas '1' | '0'; written by each at its sync)
  KEYS[19..] the keys of which one at least exists while the queue is there (keys.py
           presence)
  ARGV[1..3] shared prefix, now, events maxlen; then tenant id, version, on ('1' | '0':
           removed), max_queue_size, max_concurrency, rate max, rate duration ms, weight,
           allowed regions (',a,b,' or ''), when the copy was read from the registry (ms,
           Redis clock; '' unknown), the tombstone TTL (ms), and '1' to write only into a
           queue that is still there (the registry's copies: a queue whose keys were
           deleted is not brought back; '' from the queue's own registration)
  Writes only when the version is above the one the queue holds, so copies that arrive
  in any order (two registries, a resync racing an update) end with the newest. A copy
  read more than the TTL ago is not written at all: a removed tenant's copy in the queue
  (a tombstone, on = '0') refuses older copies only for the TTL once the tenant has
  nothing left here, so one that late could bring the tenant back.
  A written copy whose quota leaves more room than the old one (max_concurrency raised
  or lifted, a rate limit raised or lifted, a weight raised, the tenant removed) hands
  its lane that room at once, as a running job's end would (top_up, prelude.lua: at most
  1,000 jobs per copy, fresh places and tickets under fair dispatch), and wakes idle
  workers; a lowered quota moves nothing and stops nothing that runs. Skipped while
  KEYS[18] holds no declarations (no process of the queue synced yet): the workers'
  sync then refills the lane (tn_heal.lua).
  A tombstone (written now or held already) whose tenant has nothing left in the queue
  (count 0, no running job, no ticket, an empty lane, no recount under way) is retired:
  it expires after the TTL. A live copy written over a tombstone (the tenant created
  again) starts clean: the old life's totals, rate window and TTL go (its count of jobs
  still unfinished stays). A tombstone for a queue holding no copy of the tenant is
  written too (retired at once), so that a live copy read before the removal and
  landing later is refused here.
  Returns { status, retired } — status 1 written, 0 the queue already holds this version
  or a newer one, -1 a key holds another type (damaged, written by hand: nothing is
  written), -2 the copy is older than the TTL (nothing written), -3 the queue is gone
  (none of KEYS[19..] exists, ARGV[15] '1': nothing written); retired 1 when the
  queue's copy is a tombstone of this version or newer with its TTL running. When the
  tenant's count n holds something that is not an integer (damaged), what it holds is
  appended: the caller recounts it (tn_recount.lua).
  The keys share the queue's hash tag (cluster-safe). The tenant's counts in the same
  hash are left as they are.
]]
--@include lib_base
--@include lib_jobs
--@include lib_events
--@include lib_parking
--@include lib_park_timers
local TA = { unpack(ARGV, 4, 14) }
local TK_KEYS = { unpack(KEYS, 13, 17) }
-- The queue's declarations, compiled into its fragments (lua.py): the prelude below
-- reads them from KEYS[18]; none known (or the key damaged): no lane is refilled here.
local DECL = redis.pcall('HMGET', KEYS[18], 'quantum', 'fair', 'quotas')
local DECL_KNOWN = type(DECL) == 'table' and not DECL.err and DECL[1] ~= false
if not DECL_KNOWN then DECL = {} end
local DECL_QUANTUM = arg_int(DECL[1], 1, 1, 1000)
local DECL_FAIR, DECL_QUOTAS = DECL[2] == '1', DECL[3] ~= '0'
local DECL_REFILL = math.max(1, math.floor(DECL_QUANTUM / 4))
@PRELUDE@

local v = tonumber(TA[2])
if v == nil or v ~= v then
  return redis.error_reply('KQ_BAD_ARGUMENT tn_put: version ' .. tostring(TA[2]) ..
    ' is not a number; nothing was written')
end
-- A queue whose keys were all deleted gets nothing of a registry's copy (it would
-- bring back keys of a queue nobody uses); nothing of the tenant is left there either.
if ARGV[15] == '1' and redis.call('EXISTS', unpack(KEYS, 19)) == 0 then return { -3, 1 } end
local ttl = math.floor(tonumber(TA[11]) or 0)
local read_at = tonumber(TA[10] or '')
if read_at and ttl > 0 and NOW - read_at > ttl then return { -2, 0 } end
-- Types first: no write below may fail after the first.
for i = 1, 2 do
  local t = redis.call('TYPE', TK_KEYS[i])
  if type(t) == 'table' then t = t['ok'] end
  if t ~= 'none' and t ~= (i == 1 and 'hash' or 'zset') then return { -1, 0 } end
end
local held = redis.call('HMGET', TK_KEYS[1], 'v', 'on')
local cur = tonumber(held[1] or '') or 0
-- The tenant's count of unfinished jobs (n) damaged outside kitium-queue (not an
-- integer: the scripts leave it as it is and refuse the tenant's jobs under a
-- max_queue_size, prelude.lua count_of): the reply says so, and the caller recounts it
-- in bounded steps (tn_recount.lua).
local raw = redis.call('HGET', TK_KEYS[1], 'n')
local damaged = raw and not (#raw <= 15 and string.match(raw, '^%d+$'))

-- The queue's copy is a tombstone: retired (its TTL set) once the tenant has nothing
-- left here. 1 when retired (now or before).
local function retire()
  if redis.call('PTTL', TK_KEYS[1]) >= 0 then return 1 end
  if (raw and raw ~= '0') or redis.call('HEXISTS', TK_KEYS[1], 'rc') == 1 then return 0 end
  for i = 3, 5 do
    local n = redis.pcall(i == 5 and 'ZCARD' or 'SCARD', TK_KEYS[i])
    if n ~= 0 then return 0 end
  end
  if ttl <= 0 then return 0 end
  redis.call('PEXPIRE', TK_KEYS[1], ttl)
  return 1
end

local function reply(status, retired)
  if damaged then return { status, retired, raw } end
  return { status, retired }
end

if v <= cur then
  local retired = 0
  if held[2] and held[2] ~= '1' and cur >= v then retired = retire() end
  return reply(0, retired)
end
if TA[3] == '1' and held[2] and held[2] ~= '1' then
  -- Created again over its tombstone: only its unfinished jobs' count (and a recount
  -- under way) carries over; DEL also ends the tombstone's TTL.
  local keep = redis.call('HMGET', TK_KEYS[1], 'n', 'rc', 'rcn', 'rcc', 'rcs')
  redis.call('DEL', TK_KEYS[1])
  local names = { 'n', 'rc', 'rcn', 'rcc', 'rcs' }
  for i = 1, 5 do
    if keep[i] then redis.call('HSET', TK_KEYS[1], names[i], keep[i]) end
  end
end
redis.call('HSET', TK_KEYS[1], 'v', TA[2], 'on', TA[3], 'mqs', TA[4], 'mc', TA[5],
  'rlm', TA[6], 'rld', TA[7], 'w', TA[8], 'ar', TA[9])

-- The room the new quota leaves goes to the first jobs of the tenant's lane, as a
-- running job's end would hand it (release.lua): without this the jobs the old quota
-- held there waited for a running job of the tenant to end, or for a worker's sync.
-- A damaged tenant key found on the way (a tickets set of another type) refills
-- nothing: its reads fail before any move, and the copy stays written.
local function refill()
  local t = TA[1]
  if not DECL_KNOWN or t == '' or #t > MAX_TENANT_ID then return end
  local s = state(t)
  if lane(s) then top_up(s) end
end

if TA[3] == '1' then
  redis.call('ZADD', TK_KEYS[2], 0, TA[1])
  pcall(refill)
  return reply(1, 0)
end
redis.call('ZREM', TK_KEYS[2], TA[1])
-- A removed tenant's jobs run to their end without its quota (weight 1).
pcall(refill)
return reply(1, retire())
