--[[
  replay.lua — bring dead-lettered jobs back (dlq → waiting), oldest first, with a fresh
  set of attempts.

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]  limit, clamped to 0..1000 (BATCH_MAX; missing or not a number: 1000);
           replay_dlq() calls again for more

  Returns the ids replayed. Events: job-waiting per job.
]]
--@include lib_requeue

-- A limit of 0 must not become ZRANGE 0 -1, which is the whole set.
local limit = arg_int(ARGV[4], BATCH_MAX, 0, BATCH_MAX)
local ids = {}
if limit > 0 then ids = redis.call('ZRANGE', K_DLQ, 0, limit - 1) end
for i = 1, #ids do requeue(ids[i], K_DLQ) end
if #ids > 0 then wake() end
return ids
