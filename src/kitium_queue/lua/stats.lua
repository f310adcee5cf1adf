--[[
  stats.lua — counts of every state, in one consistent read.

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.

  Returns { waiting, active, delayed, completed, failed, dlq, paused flag ('1'|'0'),
            created ts of the oldest waiting job or -1, now,
            job records found missing (count_missing in lib_base.lua) }
]]
--@include lib_base

local oldest = -1
local first = redis.call('ZRANGE', K_WAIT, 0, 0)
if first[1] then
  oldest = tonumber(redis.call('HGET', job_key(first[1]), 'ts') or '-1')
end
local paused = '0'
if redis.call('HGET', K_META, 'paused') == '1' then paused = '1' end
return {
  redis.call('ZCARD', K_WAIT), redis.call('ZCARD', K_ACTIVE), redis.call('ZCARD', K_DELAYED),
  redis.call('ZCARD', K_COMPLETED), redis.call('ZCARD', K_FAILED), redis.call('ZCARD', K_DLQ),
  paused, oldest, NOW, redis.call('HGET', K_META, 'missing') or '0'
}
