--[[
  schedule_due.lua — what a scheduler must do now: the schedules whose next tick is due,
  and when the next one after those falls due. Read-only, except that index entries of
  schedules whose key is gone are dropped.

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]  max schedules returned (bounded work)

  Returns { now, next, id1, due1, version1, def1, runs1, id2, ... }; version '' = a
  damaged record (a key of another type, a hash without a version): not to be fired
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
  local sk = schedule_key(id)
  local kind = redis.call('TYPE', sk)['ok']
  if kind == 'none' then
    -- The schedule's hash is gone: drop the dangling index entry.
    redis.call('ZREM', K_SCHED_DUE, id)
  else
    -- A key of another type (damaged by hand) is returned without a version: the
    -- caller reports it and fires the others (HMGET on it would fail the whole call).
    local f = { false, false, false, false }
    if kind == 'hash' then f = redis.call('HMGET', sk, 'due', 'v', 'def', 'cnt') end
    out[#out + 1] = id
    out[#out + 1] = f[1] or ''
    out[#out + 1] = f[2] or ''
    out[#out + 1] = f[3] or ''
    out[#out + 1] = f[4] or '0'
  end
end
if #due >= max then
  out[2] = NOW_S
else
  local after = redis.call('ZRANGEBYSCORE', K_SCHED_DUE, '(' .. NOW_S, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if after[2] then out[2] = after[2] end
end
return out
