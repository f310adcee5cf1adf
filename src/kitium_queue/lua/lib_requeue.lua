--[[
  lib_requeue.lua — fragment: requeue(id, set_key), used by retry.lua and replay.lua.

  Put a finished job back to wait as a fresh job: attempts and stalls reset, last error
  kept in 'le' for the record. FINISHED_SETS maps a finished state to its set.

  requeue_damaged(i, ...) -> the KQ_DAMAGED_KEY reply or nil: checks, before the first
    write, the keys a requeue from the finished sets KEYS[i], ... writes
  requeue_sound(ids, set_key) -> moved ids, skipped count
    requeue each id (a member of set_key) whose record is a hash with a state; the
    others stay in the set: one whose record is gone (evicted, deleted), has no state or
    whose key holds another type cannot run again and stays as the record of its loss
    (read with pcall, so it cannot fail the call after its writes), and one whose record
    says it is held elsewhere (active, delayed, pending: a stale entry) is not run a
    second time.
  requeue_upto(set_key, given) -> the newest score a bulk requeue examines, as text,
    or nil (the set is empty): `given` when it is a number (the cutoff of the bulk
    call's first script call; clamped to 0..MAX_MS), else the score of the newest
    entry of set_key now. A finished set is scored by finish time, so a job the bulk
    call moved that finishes again joins it after the cutoff, and the call never moves
    it a second time.
  requeue_range(set_key, start, limit, given) -> ids, cutoff: the entries a bulk
    requeue examines, from position `start`, at most `limit`, none scored past the
    cutoff (requeue_upto(set_key, given)).
  Slot: every requeued job passes the `requeue` slot (kitium_queue.slots) once it is back
  in wait, with the state it left.
]]
--@include lib_base
--@include lib_events
--@include lib_jobs
--@include slot_requeue

local FINISHED_SETS = { failed = K_FAILED, dlq = K_DLQ, completed = K_COMPLETED }
-- Their index in KEYS (check_keys, lib_base.lua).
local FINISHED_INDEX = { failed = 5, dlq = 6, completed = 4 }

-- Before the first write of a call that requeues from the finished sets of the
-- KEYS indices given: the KQ_DAMAGED_KEY reply when one of them, wait, the event stream
-- or the marker holds another type (a failure there after a job left its finished set
-- would leave it in no set), else nil.
local function requeue_damaged(...)
  return check_keys(1, 8, 9, ...)
end

local function requeue(id, set_key)
  local jk = job_key(id)
--@if requeue
  local from = redis.call('HGET', jk, 'st')
--@end
  redis.call('ZREM', set_key, id)
  local err = redis.call('HGET', jk, 'e')
  if err then redis.call('HSET', jk, 'le', err) end
  redis.call('HSET', jk, 'a', 0, 's', 0)
  redis.call('HDEL', jk, 'e', 'tb', 'f', 'r', 'lt', 'due', 'cx', 'pg')
  push_wait(jk, id)
  emit('job-waiting', id, 'from', 'retry')
--@if requeue
  requeue_slot(id, jk, from or '')
--@end
end

local function requeue_upto(set_key, given)
  local n = arg_int(given, nil, 0, MAX_MS)
  if n ~= nil then return int(n) end
  local last = redis.call('ZRANGE', set_key, -1, -1, 'WITHSCORES')
  return last[2]
end

-- The entries of set_key a bulk requeue examines: from position `start`, at most `limit`,
-- none scored past the cutoff (requeue_upto). By rank, as ZRANGE reads them (a score
-- range with an offset would walk the entries it skips); returns them and the cutoff.
local function requeue_range(set_key, start, limit, given)
  local upto = requeue_upto(set_key, given)
  local ids = {}
  if limit <= 0 or not upto then return ids, upto end
  local cut = tonumber(upto)
  local r = redis.call('ZRANGE', set_key, int(start), int(start + limit - 1), 'WITHSCORES')
  for i = 1, #r, 2 do
    if tonumber(r[i + 1]) > cut then break end
    ids[#ids + 1] = r[i]
  end
  return ids, upto
end

local HELD = { active = true, delayed = true, pending = true }

local function requeue_sound(ids, set_key)
  local moved, skipped = {}, 0
  for i = 1, #ids do
    local st = redis.pcall('HGET', job_key(ids[i]), 'st')
    if type(st) == 'string' and not HELD[st] then
      requeue(ids[i], set_key)
      moved[#moved + 1] = ids[i]
    else
      skipped = skipped + 1
    end
  end
  return moved, skipped
end
