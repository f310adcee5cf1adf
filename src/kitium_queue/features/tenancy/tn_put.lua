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
  When the tenant's count n held something that is not an integer (damaged), it is
  recounted first (see below) and the reply is { 1 | 0, the count, what n held }.
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
-- The tenant's count of unfinished jobs (n) damaged outside kitium-queue (not an
-- integer: the scripts leave it as it is and refuse the tenant's jobs under a
-- max_queue_size, prelude.lua count_of): recounted from the job records marked as
-- counted (tn = the tenant, tq), in this one atomic step. It scans the database's keys
-- (SCAN MATCH <queue>job:*), so it blocks Redis about 1 s per million keys: only ever
-- for this repair.
local recount = nil
local raw = redis.call('HGET', KEYS[1], 'n')
if raw and not (#raw <= 15 and string.match(raw, '^%d+$')) then
  local tenant = ARGV[1]
  local base = string.sub(KEYS[1], 1, #KEYS[1] - #('tn:' .. tenant))
  local pattern = string.gsub(base, '[%*%?%[%]\\]', '\\%0') .. 'job:*'
  local cursor, n = '0', 0
  repeat
    local r = redis.call('SCAN', cursor, 'MATCH', pattern, 'COUNT', 1000)
    cursor = r[1]
    for i = 1, #r[2] do
      local f = redis.pcall('HMGET', r[2][i], 'tn', 'tq')
      if type(f) == 'table' and not f.err and f[1] == tenant and f[2] then n = n + 1 end
    end
  until cursor == '0'
  redis.call('HSET', KEYS[1], 'n', n)
  recount = { n, raw }
end
local cur = tonumber(redis.call('HGET', KEYS[1], 'v') or '') or 0
local written = 1
if v <= cur then written = 0 end
if recount then
  if written == 0 then return { 0, recount[1], recount[2] } end
  recount = { 1, recount[1], recount[2] }
elseif written == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'on', ARGV[3], 'mqs', ARGV[4], 'mc', ARGV[5],
  'rlm', ARGV[6], 'rld', ARGV[7], 'w', ARGV[8], 'ar', ARGV[9])
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[2], 0, ARGV[1])
else
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return recount or 1
