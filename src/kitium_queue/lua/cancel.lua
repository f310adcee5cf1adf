--[[
  cancel.lua — stop jobs: waiting or delayed jobs are removed at once; an active job is
  flagged, and its worker stops it at its next lease renewal and records it as failed
  (no retry) with reason "cancelled". A parked job (pending) is removed like a waiting
  one; both go through remove_unstarted (lib_parking.lua: out of its set or blocker, the
  `release` slot with outcome 'removed').

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4..]  job ids (at most 1000; more is refused with KQ_BAD_ARGUMENT before any
             write)

  Returns one status per id: 'removed' | 'flagged' | 'missing' | 'finished'.
  A job whose key holds another type than a hash (damaged by hand) is never read as a
  hash: waiting or delayed, it is removed (out of its set, then its key); running, it is
  'flagged' with only its event written (its worker's next renewal finds the record
  damaged and gives the job up; recovery dead-letters it); listed as finished,
  'finished'; else 'missing'.
  Damaged keys: KQ_DAMAGED_KEY <found> <expected> <key> when a key the call writes (the
  event stream, the sets its jobs leave, meta for a parked job) holds another type;
  nothing was written. A damaged parking key is skipped (lib_parking.lua).
  Events: job-removed (reason cancelled) or job-cancelling.
]]
--@include lib_events
--@include lib_jobs
--@include lib_parking
--@include slot_release

if #ARGV - 3 > BATCH_MAX then
  return bad_arg('cancel', 'at most ' .. BATCH_MAX .. ' job ids per call, got ' ..
    (#ARGV - 3))
end
-- A job whose key holds another type (see the header): its status, by the sets it is in.
local function cancel_damaged(id, jk)
  if redis.call('ZREM', K_WAIT, id) + redis.call('ZREM', K_DELAYED, id) > 0 then
    if release_hook then release_hook(id, jk, 'removed') end
    delete_job(id)
    emit('job-removed', id, 'reason', 'cancelled')
    return 'removed'
  elseif redis.call('ZSCORE', K_ACTIVE, id) then
    emit('job-cancelling', id)
    return 'flagged'
  end
  local sets = { K_COMPLETED, K_FAILED, K_DLQ }
  for s = 1, #sets do
    if redis.call('ZSCORE', sets[s], id) then return 'finished' end
  end
  return 'missing'
end

-- A first pass writes nothing: the keys the call will write (check_keys, lib_base.lua),
-- so that one holding another type refuses the whole call before its first write.
local need, needs = key_list(8)
for i = 4, #ARGV do
  local jk = job_key(ARGV[i])
  local kt = key_type(jk)
  if kt ~= 'hash' and kt ~= 'none' then
    needs(1, 3, 2, 4, 5, 6)
  elseif kt == 'hash' then
    local f = redis.call('HMGET', jk, 'st', 'pk')
    if f[1] == 'waiting' or f[1] == 'delayed' or f[1] == 'pending' then
      needs(1, 3)
      if f[2] then
        local damaged = parked_damaged(f[2])
        if damaged then return damaged end
      end
    end
  end
end
local damaged = check_keys(unpack(need))
if damaged then return damaged end

local out = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local jk = job_key(id)
  local kt = key_type(jk)
  local st = kt == 'hash' and redis.call('HGET', jk, 'st')
  if kt ~= 'hash' and kt ~= 'none' then
    out[#out + 1] = cancel_damaged(id, jk)
  elseif not st then
    out[#out + 1] = 'missing'
  elseif st == 'waiting' or st == 'delayed' or st == 'pending' then
    remove_unstarted(id, jk)
    emit('job-removed', id, 'reason', 'cancelled')
    out[#out + 1] = 'removed'
  elseif st == 'active' then
    redis.call('HSET', jk, 'cx', '1')
    emit('job-cancelling', id)
    out[#out + 1] = 'flagged'
  else
    out[#out + 1] = 'finished'
  end
end
return out
