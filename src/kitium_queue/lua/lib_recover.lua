--[[
  lib_recover.lua — fragment: recover(limit, max_stalled, dlq_enabled) -> back, dead

  Requeue jobs whose lease expired, examining at most `limit` (clamped to
  0..BATCH_MAX; missing or NaN: BATCH_MAX) per call. A job that has stalled more than
  max_stalled times (clamped to 0..MAX_MS; missing or NaN: 2) is dead-lettered, and so
  is one cancel_job() had flagged. The stalled run does not count as an attempt.
  Returns {recovered ids}, {dead-lettered ids}: every examined job is in one of them.

  Slot: every examined job leaves active, so each passes the `release` slot once, with
  outcome 'stalled' (back to wait) or 'failed' (dead-lettered).
]]
--@include lib_base
--@include lib_events
--@include lib_jobs
--@include lib_retention
--@include slot_release

local function recover(limit, max_stalled, dlq_enabled)
  limit = arg_int(limit, BATCH_MAX, 0, BATCH_MAX)
  max_stalled = arg_int(max_stalled, 2, 0, MAX_MS)
  if limit == 0 then return {}, {} end
  local expired = redis.call('ZRANGEBYSCORE', K_ACTIVE, '-inf', int(NOW), 'LIMIT', 0, limit)
  local back, dead = {}, {}
  for i = 1, #expired do
    local id = expired[i]
    local jk = job_key(id)
    redis.call('ZREM', K_ACTIVE, id)
    local kt = key_type(jk)
    if kt == 'none' then
      -- The hash was deleted while the job ran: dead-letter a record of it rather than
      -- drop the job silently.
      --@slot release(id, jk, 'failed')
      count_missing()
      dead_letter(jk, id, dlq_enabled,
        'job record missing: its hash key was deleted while the job was running', '')
      dead[#dead + 1] = id
    elseif kt ~= 'hash' then
      --@slot release(id, jk, 'failed')
      dead_letter(jk, id, dlq_enabled,
        'job record damaged: its key holds a ' .. kt .. ', not a hash', '', true)
      dead[#dead + 1] = id
    else
      local c = redis.call('HMGET', jk, 's', 'a')
      local stalls = num(c[1]) + 1
      redis.call('HSET', jk, 's', int(stalls), 'a', int(math.max(num(c[2]) - 1, 0)))
      redis.call('HDEL', jk, 'lt')
      if stalls > max_stalled then
        --@slot release(id, jk, 'failed')
        dead_letter(jk, id, dlq_enabled,
          'job stalled ' .. stalls .. ' times (max_stalled_count=' .. max_stalled ..
          '): its worker died or stopped renewing the lease each time', '')
        dead[#dead + 1] = id
      elseif redis.call('HEXISTS', jk, 'cx') == 1 then
        -- cancel_job() flagged it, then its worker vanished before it could stop it:
        -- finish the cancellation here instead of running the job again.
        redis.call('HDEL', jk, 'cx')
        --@slot release(id, jk, 'failed')
        dead_letter(jk, id, dlq_enabled,
          'cancelled by cancel_job() (its worker stopped before it could stop the job)', '')
        dead[#dead + 1] = id
      else
        --@slot release(id, jk, 'stalled')
        push_wait(jk, id)
        emit('job-stalled', id, 'stalls', stalls)
        back[#back + 1] = id
      end
    end
  end
  if #back > 0 then wake() end
  return back, dead
end
