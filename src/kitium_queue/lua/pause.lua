--[[
  pause.lua — pause or resume a queue for every worker. Paused workers finish what they
  run and claim nothing new; producers may still add jobs.

  KEYS: the shared layout (lib_base.lua); uses meta, events, marker.
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]  '1' pause, '0' resume

  Returns 1. Events: queue-paused | queue-resumed.
  Damaged keys: KQ_DAMAGED_KEY <found> <expected> <key> when a key it writes holds
  another type (check_keys, lib_base.lua); nothing was written.
]]
--@include lib_events

-- meta and the event stream, and the marker on resume, before the first write.
local damaged
if ARGV[4] == '1' then damaged = check_keys(7, 8) else damaged = check_keys(7, 8, 9) end
if damaged then return damaged end
if ARGV[4] == '1' then
  redis.call('HSET', K_META, 'paused', '1')
  emit('queue-paused', '')
else
  redis.call('HDEL', K_META, 'paused')
  emit('queue-resumed', '')
  wake()
end
return 1
