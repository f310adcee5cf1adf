--[[
  schedule_due.lua — what a scheduler must do now: the schedules whose next tick is due,
  and when the next one after those falls due. Read-only, except that index entries of
  schedules whose hash is gone are dropped.

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]  max schedules returned (bounded work)

  Returns { now, next, id1, due1, version1, def1, runs1, id2, ... }
    now   the time used (ms), so callers compute ticks on the Redis clock
    next  nominal time of the earliest tick not returned (ms), or -1 if none
]]
--@include lib_base
--@include schedule_keys

local max = tonumber(ARGV[4])
local due = redis.call('ZRANGEBYSCORE', K_SCHED_DUE, '-inf', NOW_S, 'LIMIT', 0, max)
local out = { NOW_S, -1 }
for i = 1, #due do
  local id = due[i]
  local f = redis.call('HMGET', schedule_key(id), 'due', 'v', 'def', 'cnt')
  if f[2] then
    out[#out + 1] = id
    out[#out + 1] = f[1] or ''
    out[#out + 1] = f[2]
    out[#out + 1] = f[3] or ''
    out[#out + 1] = f[4] or '0'
  else
    -- The schedule's hash is gone: drop the dangling index entry.
    redis.call('ZREM', K_SCHED_DUE, id)
  end
end
if #due >= max then
  out[2] = NOW_S
else
  local after = redis.call('ZRANGEBYSCORE', K_SCHED_DUE, '(' .. NOW_S, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if after[2] then out[2] = after[2] end
end
return out
