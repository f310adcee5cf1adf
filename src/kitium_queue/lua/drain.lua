--[[
  drain.lua — remove jobs that have not started (waiting and parked, and delayed if
  asked), in bounded batches; running jobs are left to finish.

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]  include delayed ('1' | '0')
  ARGV[5]  max jobs removed per call, clamped to 1..1000 (BATCH_MAX; missing or not a
           number: 1000). At least 1, so a client looping until 0 always progresses.

  Every job removed passes the `release` slot (outcome 'removed') first.
  Damaged keys: KQ_DAMAGED_KEY <found> <expected> <key> when a key it writes (wait,
  delayed, the event stream; with parked jobs, meta) holds another type; nothing was
  written. A damaged parking key is skipped (lib_parking.lua).
  Returns the number removed by this call (the client calls again until 0).
  Events: one queue-drained event when the call removed anything.
]]
--@include lib_events
--@include lib_jobs
--@include lib_sets
--@include lib_parking
--@include slot_release

local limit = arg_int(ARGV[5], BATCH_MAX, 1, BATCH_MAX)
-- The keys written after the first write (check_keys, lib_base.lua), before it.
local damaged = check_keys(1, 8) or (ARGV[4] == '1' and check_keys(3)) or parked_damaged()
if damaged then return damaged end
local removed = 0
-- Parked jobs (pending: waiting behind a blocker, lib_parking.lua) have not started
-- either; they go like waiting ones, and first: removing a blocker that waits (a FIFO
-- group's turn holder in its backoff) hands its turn to the next of its line, which
-- would then be in wait after this call's pass over it and run.
--@if release
removed = drop_parked(limit, release_slot)
--@else
removed = drop_parked(limit)
--@end
local sets = { K_WAIT }
if ARGV[4] == '1' then sets[2] = K_DELAYED end
for s = 1, #sets do
  if removed < limit then
    local ids = redis.call('ZRANGE', sets[s], 0, limit - removed - 1)
--@if release
    for i = 1, #ids do release_slot(ids[i], job_key(ids[i]), 'removed') end
--@end
    delete_jobs(ids)
    zrem_all(sets[s], ids)
    removed = removed + #ids
  end
end
if removed > 0 then emit('queue-drained', '', 'count', removed) end
return removed
