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
local out = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local jk = job_key(id)
  local st = redis.call('HGET', jk, 'st')
  if not st then
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
