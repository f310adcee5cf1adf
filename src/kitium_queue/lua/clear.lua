--[[
  clear.lua — delete every job and every key of the queue, in bounded batches.

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]  force ('1' | '0'): without force, a queue with active jobs is refused
           (KQ_QUEUE_ACTIVE) so running work is not pulled from under its workers.
  ARGV[5]  max jobs deleted per call, clamped to 1..1000 (BATCH_MAX; missing or not a
           number: 1000). At least 1, so a client looping while 1 always progresses.

  Damaged keys: KQ_DAMAGED_KEY <found> <expected> <key> when a state set, the parked
  index (or, with parked jobs, meta) holds another type; nothing was written.
  Returns 1 when more remains (call again), 0 when the queue is gone. The id and
  lease counters are kept, so ids and fencing tokens never repeat, and so are the
  queue's settings in meta ('paused', 'outbox_cap'): a paused queue stays paused.
  Parked jobs and their bookkeeping (lib_parking.lua) go too. With force, every active
  job deleted passes the `release` slot (outcome 'removed') first, so features that
  count running jobs stay exact.
]]
--@include lib_jobs
--@include lib_sets
--@include lib_parking
--@include slot_release
--@include errors

if ARGV[4] ~= '1' then
  local n = redis.call('ZCARD', K_ACTIVE)
  if n > 0 then
    return fail(ERR_QUEUE_ACTIVE, n .. ' jobs are active; wait for them, or pass force=True')
  end
end
local budget = arg_int(ARGV[5], BATCH_MAX, 1, BATCH_MAX)
-- The keys written after the first write (check_keys, lib_base.lua), before it.
-- The parked index too: drop_parked stops at a damaged one (lib_parking.lua), and this
-- call would answer 'more remains' for ever.
local damaged = check_keys(1, 2, 3, 4, 5, 6) or parked_damaged() or
  check_key(K_PARKED, 'zset')
if damaged then return damaged end
-- Parked jobs first: releasing a running job (force) hands its FIFO turn or its
-- concurrency place to the next job parked behind it, which would then be in wait
-- between two calls of the clear, and a worker would start it.
budget = budget - drop_parked(budget)
local sets = { K_WAIT, K_ACTIVE, K_DELAYED, K_COMPLETED, K_FAILED, K_DLQ }
for s = 1, #sets do
  if budget <= 0 then return 1 end
  local ids = redis.call('ZRANGE', sets[s], 0, budget - 1)
--@if release
  if sets[s] == K_ACTIVE then
    for i = 1, #ids do release_slot(ids[i], job_key(ids[i]), 'removed') end
  end
--@end
  delete_jobs(ids)
  zrem_all(sets[s], ids)
  budget = budget - #ids
end
for s = 1, #sets do
  if redis.call('ZCARD', sets[s]) > 0 then return 1 end
end
if redis.call('EXISTS', K_PARKED) == 1 then return 1 end
-- The id and lease-token counters survive: an idempotency key (kept for its whole
-- window) must never point at a new, unrelated job reusing an old id, and a fencing
-- token must never be handed out twice.
-- UNLINK: the event stream may hold millions of entries (events_max_len); freeing it
-- happens in the background instead of inside this call.
-- The chosen ids' windows go with their jobs (enqueue.lua): an id is free again.
-- The meta hash goes with what it counts (parked jobs, missing records) but its settings
-- stay: a queue paused to be cleared is still paused after, and the outbox (kept) keeps
-- its cap. A meta key of another type is damaged: it goes, settings and all.
local settings = {}
if redis.call('TYPE', K_META)['ok'] == 'hash' then
  settings = redis.call('HMGET', K_META, 'paused', 'outbox_cap')
end
redis.call('UNLINK', K_META, K_EVENTS, K_MARKER, K_LIMITER, K_PARK_TIMERS, K_PARK_RULES,
  PREFIX .. 'slot-errors', PREFIX .. 'jids')
if settings[1] then redis.call('HSET', K_META, 'paused', settings[1]) end
if settings[2] then redis.call('HSET', K_META, 'outbox_cap', settings[2]) end
return 0
