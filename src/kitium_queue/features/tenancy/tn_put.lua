--[[
  tn_put.lua — copy one tenant's quota into one queue, if it is newer (TenantRegistry).

  KEYS[1]  <prefix>:{<queue>}:tn:<tenant>  HASH  the tenant in the queue (prelude.lua)
  KEYS[2]  <prefix>:{<queue>}:tenants      ZSET  index of the tenants set up in the queue
  ARGV     tenant id, version, on ('1' | '0': removed), max_queue_size, max_concurrency,
           rate max, rate duration ms, weight, allowed regions (',a,b,' or '')
  Writes only when the version is above the one the queue holds, so copies that arrive
  in any order (two registries, a resync racing an update) end with the newest.
  Returns 1 when written, 0 when the queue already holds this version or a newer one,
  -1 when a key holds another type (damaged, written by hand): nothing is written.
  When the tenant's count n holds something that is not an integer (damaged), the
  reply is { 1 | 0, what n holds }: the caller recounts it (tn_recount.lua).
  Both keys share the queue's hash tag (cluster-safe). The tenant's counts in the same
  hash are left as they are.
]]
local v = tonumber(ARGV[2])
if v == nil or v ~= v then
  return redis.error_reply('KQ_BAD_ARGUMENT tn_put: version ' .. tostring(ARGV[2]) ..
    ' is not a number; nothing was written')
end
-- Types first: no write below may fail after the first.
for i = 1, 2 do
  local t = redis.call('TYPE', KEYS[i])
  if type(t) == 'table' then t = t['ok'] end
  if t ~= 'none' and t ~= (i == 1 and 'hash' or 'zset') then return -1 end
end
local cur = tonumber(redis.call('HGET', KEYS[1], 'v') or '') or 0
-- The tenant's count of unfinished jobs (n) damaged outside kitium-queue (not an
-- integer: the scripts leave it as it is and refuse the tenant's jobs under a
-- max_queue_size, prelude.lua count_of): the reply says so, and the caller recounts it
-- in bounded steps (tn_recount.lua).
local raw = redis.call('HGET', KEYS[1], 'n')
local damaged = raw and not (#raw <= 15 and string.match(raw, '^%d+$'))
if v <= cur then
  if damaged then return { 0, raw } end
  return 0
end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'on', ARGV[3], 'mqs', ARGV[4], 'mc', ARGV[5],
  'rlm', ARGV[6], 'rld', ARGV[7], 'w', ARGV[8], 'ar', ARGV[9])
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[2], 0, ARGV[1])
else
  redis.call('ZREM', KEYS[2], ARGV[1])
end
if damaged then return { 1, raw } end
return 1
