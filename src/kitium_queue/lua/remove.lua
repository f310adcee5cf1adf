--[[
  remove.lua — delete jobs that are not running (any state but active → gone).

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4..]  job ids (at most 1000; more is refused with KQ_BAD_ARGUMENT before any
             write)

  Returns one status per id: 'removed' | 'missing' | 'active' (active jobs are left
  alone: cancel them with cancel.lua, or wait for them to finish). A job removed before
  it finished (waiting, delayed, pending) goes through remove_unstarted (lib_parking.lua:
  out of its set or blocker, the `release` slot with outcome 'removed').
  A finished job (completed, failed, dlq) passed it when it left active.
  A job with no usable record -- its hash gone (evicted, deleted), its key overwritten
  with another type, or a hash with no known state -- is removed from every state set it is still listed in (active
  excepted: recovery dead-letters it), its key with it: 'removed' when anything was
  there, else 'missing'. Such a key is never read as a hash, so it cannot fail the call
  half way.
  Damaged keys: KQ_DAMAGED_KEY <found> <expected> <key> when a key the call writes (the
  event stream, the state sets its jobs leave, meta for a parked job) holds another
  type; nothing was written. A damaged parking key is skipped (lib_parking.lua).
  Events: job-removed per removed job.
]]
--@include lib_events
--@include lib_jobs
--@include lib_parking
--@include slot_release

if #ARGV - 3 > BATCH_MAX then
  return bad_arg('remove', 'at most ' .. BATCH_MAX .. ' job ids per call, got ' ..
    (#ARGV - 3))
end
local STATE_SETS = { waiting = K_WAIT, delayed = K_DELAYED, completed = K_COMPLETED,
  failed = K_FAILED, dlq = K_DLQ }
local UNSTARTED = { K_WAIT, K_DELAYED }
local FINISHED = { K_COMPLETED, K_FAILED, K_DLQ }

-- A job without a usable record (see the header; also a hash with no known state):
-- out of every set but active, then its key. The `release` slot runs when it left
-- wait or delayed, as claim runs it for such a key. Returns its status.
local function remove_unusable(id, jk, kt)
  if redis.call('ZSCORE', K_ACTIVE, id) then return 'active' end
  local unstarted = false
  if kt == 'hash' then forget_parked(id, jk) end
  for s = 1, #UNSTARTED do
    if redis.call('ZREM', UNSTARTED[s], id) == 1 then unstarted = true end
  end
  local found = unstarted or kt ~= 'none'
  for s = 1, #FINISHED do
    if redis.call('ZREM', FINISHED[s], id) == 1 then found = true end
  end
  if not found then return 'missing' end
  if unstarted and release_hook then release_hook(id, jk, 'removed') end
  delete_job(id)
  return 'removed'
end

-- A first pass writes nothing: the keys the call will write (check_keys, lib_base.lua),
-- so that one holding another type refuses the whole call before its first write.
local STATE_INDEX = { waiting = 1, delayed = 3, completed = 4, failed = 5, dlq = 6 }
-- A job's key, the type of that key, and its state field (false when there is none).
local function read_job(id)
  local jk = job_key(id)
  local kt = key_type(jk)
  local st = false
  if kt == 'hash' then st = redis.call('HGET', jk, 'st') end
  return jk, kt, st
end

local need, needs = key_list(8)
local seen = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local jk, kt, st = read_job(id)
  -- An id given twice is found without a record the second time.
  if seen[id] then needs(2, 1, 3, 4, 5, 6) end
  seen[id] = true
  if st == 'waiting' or st == 'delayed' or st == 'pending' then
    needs(1, 3)
  elseif STATE_SETS[st] then
    needs(STATE_INDEX[st])
  elseif st ~= 'active' then
    needs(2, 1, 3, 4, 5, 6)
  end
  -- forget_parked (lib_parking.lua) runs for a job that has not started or has no state.
  local blocker = kt == 'hash' and redis.call('HGET', jk, 'pk')
  if blocker and st ~= 'active' and not (STATE_SETS[st] and STATE_INDEX[st] > 3) then
    local damaged = parked_damaged(blocker)
    if damaged then return damaged end
  end
end
local damaged = check_keys(unpack(need))
if damaged then return damaged end

local out = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local jk, kt, st = read_job(id)
  local status
  if st == 'active' then
    status = 'active'
  elseif st == 'waiting' or st == 'delayed' or st == 'pending' then
    remove_unstarted(id, jk)
    status = 'removed'
  elseif STATE_SETS[st] then
    redis.call('ZREM', STATE_SETS[st], id)
    delete_job(id)
    status = 'removed'
  else
    status = remove_unusable(id, jk, kt)
  end
  if status == 'removed' then emit('job-removed', id) end
  out[#out + 1] = status
end
return out
