--[[
  replay.lua — bring dead-lettered jobs back (dlq → waiting), oldest first, with a fresh
  set of attempts.

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]  limit, clamped to 0..1000 (BATCH_MAX; missing or not a number: 1000);
           replay_dlq() calls again for more
  ARGV[5]  optional: the position in the DLQ to start at, clamped to 0..MAX_MS (missing
           or not a number: 0): how many entries earlier calls skipped (see below)
  ARGV[6]  optional, with ARGV[5] only: the newest score examined (lib_requeue.lua
           requeue_range); missing or not a number: the score of the DLQ's newest entry
           now, the cutoff the reply names. replay_dlq() passes the cutoff of its first
           call to the next ones: a job it replayed that is dead-lettered again
           meanwhile joins the DLQ after the cutoff, and is not replayed twice.

  The `limit` oldest entries from that position are examined. One whose record is gone
  or holds no state, whose key holds another type, or whose record says it is held
  elsewhere (active, delayed, pending) is skipped and stays in the DLQ (lib_requeue.lua
  requeue_sound).
  Damaged keys: when the DLQ, wait, the event stream or the marker holds another type,
  the reply is KQ_DAMAGED_KEY <found> <expected> <key> and nothing was written.
  Returns the ids replayed; with ARGV[5], { ids replayed, number skipped, cutoff }. Events:
  job-waiting per job.
]]
--@include lib_requeue

local damaged = requeue_damaged(6)
if damaged then return damaged end
-- A limit of 0 must not become ZRANGE 0 -1, which is the whole set.
local limit = arg_int(ARGV[4], BATCH_MAX, 0, BATCH_MAX)
local start = arg_int(ARGV[5], 0, 0, MAX_MS)
local ids, upto = {}, nil
if ARGV[5] then
  ids, upto = requeue_range(K_DLQ, start, limit, ARGV[6])
elseif limit > 0 then
  ids = redis.call('ZRANGE', K_DLQ, int(start), int(start + limit - 1))
end
local moved, skipped = requeue_sound(ids, K_DLQ)
if #moved > 0 then wake() end
if ARGV[5] then return { moved, skipped, upto or '' } end
return moved
