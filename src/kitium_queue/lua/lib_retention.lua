--[[
  lib_retention.lua — fragment: terminal failure (dead-lettering) and the bounded
  retention of the finished sets.

  dead_letter(jk, id, dlq_enabled, reason, tb, damaged) -> 'dlq' | 'failed'
    to the DLQ when enabled, else to the failed set; job-failed (+ job-dlq) events.
    damaged: the job key is not a hash, so only the set and the events are written.
  trim_finished(set_key, keep_count, keep_age)
    keep at most keep_count jobs (-1 = no limit) and none older than keep_age ms (-1 =
    no limit) in a finished set, deleting at most BATCH_MAX per call.
]]
--@include lib_base
--@include lib_events
--@include lib_jobs
--@include lib_sets

-- Bounded retention of a finished-jobs set: keep at most keep_count (-1 = no limit)
-- and nothing older than keep_age ms (-1 = no limit). Removes at most BATCH_MAX per
-- call, more than one finish call adds (500), so the set cannot outgrow its limit.
-- A negative, missing or NaN limit means no limit; a huge one is clamped to MAX_MS.
local function trim_finished(set_key, keep_count, keep_age)
  keep_count = arg_int(keep_count, -1, -1, MAX_MS)
  keep_age = arg_int(keep_age, -1, -1, MAX_MS)
  if keep_count >= 0 then
    local excess = redis.call('ZCARD', set_key) - keep_count
    if excess > 0 then
      if excess > BATCH_MAX then excess = BATCH_MAX end
      local old = redis.call('ZRANGE', set_key, 0, excess - 1)
      delete_jobs(old)
      zrem_all(set_key, old)
    end
  end
  if keep_age >= 0 then
    local old = redis.call('ZRANGEBYSCORE', set_key, '-inf', int(NOW - keep_age), 'LIMIT', 0,
      BATCH_MAX)
    delete_jobs(old)
    zrem_all(set_key, old)
  end
end

local function dead_letter(jk, id, dlq_enabled, reason, tb, damaged)
  local target, state = K_FAILED, 'failed'
  if dlq_enabled then target, state = K_DLQ, 'dlq' end
  if not damaged then
    redis.call('HSET', jk, 'st', state, 'f', int(NOW), 'e', reason, 'tb', tb or '')
    redis.call('HDEL', jk, 'lt')
  end
  redis.call('ZADD', target, int(NOW), id)
  local short = stream_reason(reason)
  emit('job-failed', id, 'reason', short, 'final', '1')
  if dlq_enabled then emit('job-dlq', id, 'reason', short) end
  return state
end
