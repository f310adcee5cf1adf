--[[
  schedule_remove.lua — delete a schedule. Jobs it already enqueued are left alone.

  KEYS: the shared layout (lib_base.lua); uses events.
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]  schedule id

  Returns 1 if the schedule existed, else 0.
  Events: schedule-removed (id = schedule id).
]]
--@include lib_events
--@include schedule_keys

local id = ARGV[4]
local existed = redis.call('DEL', schedule_key(id))
redis.call('ZREM', K_SCHEDULES, id)
redis.call('ZREM', K_SCHED_DUE, id)
if existed == 1 then
  emit('schedule-removed', id)
  schedules_changed(id)
end
return existed
