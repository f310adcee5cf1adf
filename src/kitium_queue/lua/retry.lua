--[[
  retry.lua — put finished jobs back to wait (failed | dlq | completed → waiting) with a
  fresh set of attempts.

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]   mode: 'ids' or 'state'
  mode 'ids':   ARGV[5..] job ids (at most 1000; more is refused with KQ_BAD_ARGUMENT).
                Raises KQ_JOB_NOT_FOUND for an unknown id and KQ_BAD_STATE for a job
                that is not failed, dlq or completed; nothing is moved in either case.
  mode 'state': ARGV[5] state ('failed' | 'dlq' | 'completed'), ARGV[6] limit, clamped
                to 0..1000 (BATCH_MAX; missing or not a number: 1000): the oldest
                `limit` jobs of that state are moved. bulk_retry() calls again for more.
  Every argument is checked before the first write.
  Returns the ids moved. Events: job-waiting per job.
]]
--@include lib_requeue
--@include errors

local moved = {}
if ARGV[4] == 'ids' then
  if #ARGV - 4 > BATCH_MAX then
    return bad_arg('retry', 'at most ' .. BATCH_MAX .. ' job ids per call, got ' ..
      (#ARGV - 4))
  end
  local plan = {}
  for i = 5, #ARGV do
    local id = ARGV[i]
    local st = redis.call('HGET', job_key(id), 'st')
    if not st then return fail(ERR_JOB_NOT_FOUND, 'job ' .. id .. ' does not exist') end
    local set_key = FINISHED_SETS[st]
    if not set_key then
      return fail(ERR_BAD_STATE, 'job ' .. id .. ' is ' .. st ..
        '; only failed, dlq or completed jobs can be retried')
    end
    plan[#plan + 1] = { id, set_key }
  end
  for i = 1, #plan do
    requeue(plan[i][1], plan[i][2])
    moved[#moved + 1] = plan[i][1]
  end
else
  local set_key = FINISHED_SETS[ARGV[5]]
  if not set_key then
    return fail(ERR_BAD_STATE, 'cannot bulk-retry state ' .. ARGV[5] ..
      '; use failed, dlq or completed')
  end
  -- A limit of 0 must not become ZRANGE 0 -1, which is the whole set.
  local limit = arg_int(ARGV[6], BATCH_MAX, 0, BATCH_MAX)
  local ids = {}
  if limit > 0 then ids = redis.call('ZRANGE', set_key, 0, limit - 1) end
  for i = 1, #ids do
    requeue(ids[i], set_key)
    moved[#moved + 1] = ids[i]
  end
end
if #moved > 0 then wake() end
return moved
