--[[
  lib_promote.lua — fragment: promote(limit, dlq_enabled) -> moved

  Move due delayed jobs to wait, at most `limit` (clamped to 0..BATCH_MAX; missing or
  NaN: BATCH_MAX) per call. A job whose hash was deleted meanwhile is dead-lettered as a
  record of it (dlq_enabled: nil counts as enabled). Returns how many moved.
]]
--@include lib_base
--@include lib_jobs
--@include lib_sets
--@include lib_retention

local function promote(limit, dlq_enabled)
  limit = arg_int(limit, BATCH_MAX, 0, BATCH_MAX)
  -- LIMIT 0 0 would still be a query; a count of 0 asks for nothing.
  if limit == 0 then return 0 end
  local due = redis.call('ZRANGEBYSCORE', K_DELAYED, '-inf', int(NOW), 'LIMIT', 0, limit)
  for i = 1, #due do
    local id = due[i]
    local jk = job_key(id)
    local kt = key_type(jk)
    if kt == 'hash' then
      push_wait(jk, id)
      redis.call('HDEL', jk, 'due')
    elseif kt == 'none' then
      count_missing()
      dead_letter(jk, id, dlq_enabled ~= false,
        'job record missing: its hash key was deleted while the job was delayed', '')
    else
      dead_letter(jk, id, dlq_enabled ~= false,
        'job record damaged: its key holds a ' .. kt .. ', not a hash', '', true)
    end
  end
  zrem_all(K_DELAYED, due)
  return #due
end
