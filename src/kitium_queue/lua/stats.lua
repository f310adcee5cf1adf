--[[
  stats.lua — counts of every state, in one consistent read.

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.

  Returns { waiting, active, delayed, completed, failed, dlq, paused flag ('1'|'0'),
            created ts of the oldest waiting job or -1 (none, or its record damaged),
            now,
            job records found missing (count_missing in lib_base.lua) }
]]
--@include lib_base

local oldest = -1
local first = redis.call('ZRANGE', K_WAIT, 0, 0)
if first[1] then
  -- pcall and a range check: a damaged first record (a key of another type, a created
  -- time that is not a time) leaves the latency unknown (-1), never the counts unread.
  local ts = tonumber(redis.pcall('HGET', job_key(first[1]), 'ts'))
  if ts and ts >= 0 and ts <= MAX_MS then oldest = math.floor(ts) end
end
local paused = '0'
if redis.call('HGET', K_META, 'paused') == '1' then paused = '1' end
return {
  redis.call('ZCARD', K_WAIT), redis.call('ZCARD', K_ACTIVE), redis.call('ZCARD', K_DELAYED),
  redis.call('ZCARD', K_COMPLETED), redis.call('ZCARD', K_FAILED), redis.call('ZCARD', K_DLQ),
  paused, oldest, NOW, redis.call('HGET', K_META, 'missing') or '0'
}
