--[[
  schedule_pause.lua — pause or resume one schedule for every scheduler.

  A paused schedule enqueues nothing. On resume, ticks that fell in the pause are not
  misfires: the schedule continues at its stored next tick if that is still ahead, else
  at ARGV[6] (the first tick after now, computed by the caller).

  KEYS: the shared layout (lib_base.lua); uses events.
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]  schedule id
  ARGV[5]  '1' pause | '0' resume
  ARGV[6]  next tick after now ('' = none); resume only

  Resuming a schedule that is not paused changes nothing (no event).

  Returns { 'ok' | 'missing', next tick ms or '' }.
  Events: schedule-paused | schedule-resumed (id = schedule id).
  Damaged keys: as schedule_put.lua.
]]
--@include lib_events
--@include schedule_keys

local id = ARGV[4]
local sk = schedule_key(id)
local damaged = schedule_damaged(sk)
if damaged then return damaged end
local f = redis.call('HMGET', sk, 'due', 'done', 'v', 'paused')
if not f[3] then return { 'missing', '' } end
if ARGV[5] ~= '1' and f[4] ~= '1' then
  -- Not paused: nothing to resume. Moving its next tick to ARGV[6] dropped the ticks
  -- due and not yet fired (no scheduler running), which its misfire policy decides.
  return { 'ok', f[1] or '' }
end
redis.call('HSET', sk, 'v', next_version(f[3]))
if ARGV[5] == '1' then
  redis.call('HSET', sk, 'paused', '1')
  redis.call('ZREM', K_SCHED_DUE, id)
  emit('schedule-paused', id)
  schedules_changed(id)
  return { 'ok', f[1] or '' }
end
redis.call('HDEL', sk, 'paused')
local due = f[1] or ''
if f[2] ~= '1' then
  if due == '' or tonumber(due) < NOW then due = ARGV[6] end
  if due == '' then
    redis.call('HSET', sk, 'due', '', 'done', '1')
  else
    redis.call('HSET', sk, 'due', due)
    redis.call('ZADD', K_SCHED_DUE, due, id)
  end
end
emit('schedule-resumed', id, 'next', due)
schedules_changed(id)
return { 'ok', due }
