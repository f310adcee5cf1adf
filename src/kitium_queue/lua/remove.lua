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

local out = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local jk = job_key(id)
  local kt = key_type(jk)
  local st = false
  if kt == 'hash' then st = redis.call('HGET', jk, 'st') end
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
