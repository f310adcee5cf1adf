--[[
  schedule_remove.lua — delete a schedule. Jobs it already enqueued are left alone.

  KEYS: the shared layout (lib_base.lua); uses events.
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]  schedule id

  Returns 1 if the schedule existed, else 0.
  Events: schedule-removed (id = schedule id).
  Damaged keys: KQ_DAMAGED_KEY <found> <expected> <key> when the event stream or a
  schedule index holds another type; nothing was written.
]]
--@include lib_events
--@include schedule_keys

local id = ARGV[4]
-- The keys written after the first write (the DEL), before it; a schedule's key of
-- another type is deleted like a sound one.
local damaged = check_keys(8) or check_key(K_SCHEDULES, 'zset') or
  check_key(K_SCHED_DUE, 'zset')
if damaged then return damaged end
local existed = redis.call('DEL', schedule_key(id))
redis.call('ZREM', K_SCHEDULES, id)
redis.call('ZREM', K_SCHED_DUE, id)
if existed == 1 then
  emit('schedule-removed', id)
  schedules_changed(id)
end
return existed
