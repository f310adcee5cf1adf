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
local out = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local jk = job_key(id)
  local st = redis.call('HGET', jk, 'st')
  if not st then
    out[#out + 1] = 'missing'
  elseif st == 'active' then
    out[#out + 1] = 'active'
  else
    if st == 'waiting' or st == 'delayed' or st == 'pending' then
      remove_unstarted(id, jk)
    else
      local set_key = STATE_SETS[st]
      if set_key then redis.call('ZREM', set_key, id) end
      delete_job(id)
    end
    emit('job-removed', id)
    out[#out + 1] = 'removed'
  end
end
return out
