--[[
  replay.lua — bring dead-lettered jobs back (dlq → waiting), oldest first, with a fresh
  set of attempts.

  KEYS: the shared layout (common.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]  limit (≤ 1000)

  Returns the ids replayed. Events: job-waiting per job.
]]
--@include common

local ids = redis.call('ZRANGE', K_DLQ, 0, tonumber(ARGV[4]) - 1)
for i = 1, #ids do requeue(ids[i], K_DLQ) end
if #ids > 0 then wake() end
return ids
