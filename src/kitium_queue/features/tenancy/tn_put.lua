--[[
  tn_put.lua — copy one tenant's quota into one queue, if it is newer (TenantRegistry).

  KEYS[1]  <prefix>:{<queue>}:tn:<tenant>  HASH  the tenant in the queue (prelude.lua)
  KEYS[2]  <prefix>:{<queue>}:tenants      ZSET  index of the tenants set up in the queue
  KEYS[3]  <prefix>:{<queue>}:tn-run:<tenant>, KEYS[4] tn-tk:<tenant> (SETs), KEYS[5]
           parked:t:<tenant> (ZSET): its running jobs, ticket holders and lane (read only)
  ARGV     tenant id, version, on ('1' | '0': removed), max_queue_size, max_concurrency,
           rate max, rate duration ms, weight, allowed regions (',a,b,' or ''), when the
           copy was read from the registry (ms, Redis clock; '' unknown), the tombstone
           TTL (ms)
  Writes only when the version is above the one the queue holds, so copies that arrive
  in any order (two registries, a resync racing an update) end with the newest. A copy
  read more than the TTL ago is not written at all: a removed tenant's copy in the queue
  (a tombstone, on = '0') refuses older copies only for the TTL once the tenant has
  nothing left here, so one that late could bring the tenant back.
  A tombstone (written now or held already) whose tenant has nothing left in the queue
  (count 0, no running job, no ticket, an empty lane, no recount under way) is retired:
  it expires after the TTL. A live copy written over a tombstone (the tenant created
  again) starts clean: the old life's totals, rate window and TTL go (its count of jobs
  still unfinished stays). A tombstone for a queue holding no copy of the tenant is
  written too (retired at once), so that a live copy read before the removal and
  landing later is refused here.
  Returns { status, retired } — status 1 written, 0 the queue already holds this version
  or a newer one, -1 a key holds another type (damaged, written by hand: nothing is
  written), -2 the copy is older than the TTL (nothing written); retired 1 when the
  queue's copy is a tombstone of this version or newer with its TTL running. When the
  tenant's count n holds something that is not an integer (damaged), what it holds is
  appended: the caller recounts it (tn_recount.lua).
  The keys share the queue's hash tag (cluster-safe). The tenant's counts in the same
  hash are left as they are.
]]
local v = tonumber(ARGV[2])
if v == nil or v ~= v then
  return redis.error_reply('KQ_BAD_ARGUMENT tn_put: version ' .. tostring(ARGV[2]) ..
    ' is not a number; nothing was written')
end
local ttl = math.floor(tonumber(ARGV[11]) or 0)
local read_at = tonumber(ARGV[10] or '')
if read_at and ttl > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if now - read_at > ttl then return { -2, 0 } end
end
-- Types first: no write below may fail after the first.
for i = 1, 2 do
  local t = redis.call('TYPE', KEYS[i])
  if type(t) == 'table' then t = t['ok'] end
  if t ~= 'none' and t ~= (i == 1 and 'hash' or 'zset') then return { -1, 0 } end
end
local held = redis.call('HMGET', KEYS[1], 'v', 'on')
local cur = tonumber(held[1] or '') or 0
-- The tenant's count of unfinished jobs (n) damaged outside kitium-queue (not an
-- integer: the scripts leave it as it is and refuse the tenant's jobs under a
-- max_queue_size, prelude.lua count_of): the reply says so, and the caller recounts it
-- in bounded steps (tn_recount.lua).
local raw = redis.call('HGET', KEYS[1], 'n')
local damaged = raw and not (#raw <= 15 and string.match(raw, '^%d+$'))

-- The queue's copy is a tombstone: retired (its TTL set) once the tenant has nothing
-- left here. 1 when retired (now or before).
local function retire()
  if redis.call('PTTL', KEYS[1]) >= 0 then return 1 end
  if (raw and raw ~= '0') or redis.call('HEXISTS', KEYS[1], 'rc') == 1 then return 0 end
  for i = 3, 5 do
    local n = redis.pcall(i == 5 and 'ZCARD' or 'SCARD', KEYS[i])
    if n ~= 0 then return 0 end
  end
  if ttl <= 0 then return 0 end
  redis.call('PEXPIRE', KEYS[1], ttl)
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
if ARGV[3] == '1' and held[2] and held[2] ~= '1' then
  -- Created again over its tombstone: only its unfinished jobs' count (and a recount
  -- under way) carries over; DEL also ends the tombstone's TTL.
  local keep = redis.call('HMGET', KEYS[1], 'n', 'rc', 'rcn', 'rcc', 'rcs')
  redis.call('DEL', KEYS[1])
  local names = { 'n', 'rc', 'rcn', 'rcc', 'rcs' }
  for i = 1, 5 do
    if keep[i] then redis.call('HSET', KEYS[1], names[i], keep[i]) end
  end
end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'on', ARGV[3], 'mqs', ARGV[4], 'mc', ARGV[5],
  'rlm', ARGV[6], 'rld', ARGV[7], 'w', ARGV[8], 'ar', ARGV[9])
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[2], 0, ARGV[1])
  return reply(1, 0)
end
redis.call('ZREM', KEYS[2], ARGV[1])
return reply(1, retire())
