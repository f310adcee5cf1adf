(function()
  -- Compliance: an erased job's idempotency key goes, and the job leaves its subject's
  -- index; an index left empty goes, with its subject's entry in `subjects` (the
  -- `erase` slot; see enqueue.lua).
  local IDX, ALL = PREFIX .. 'subj:', PREFIX .. 'subjects'
  return function(id, jk, ik)
    -- The job's idempotency key (the engine's idem:<key> -> id; its text is the
    -- application's and may name the subject) goes with it, if it still names this job
    -- (a key a later job took is left alone), also without effectively-once.
    if ik ~= nil and ik ~= '' then
      local ikey = PREFIX .. 'idem:' .. ik
      if key_type(ikey) == 'string' and redis.call('GET', ikey) == id then
        redis.call('DEL', ikey)
      end
    end
    -- A job key damaged by hand (not a hash) names no subject.
    if key_type(jk) ~= 'hash' then return end
    local sj = redis.call('HGET', jk, 'sj')
    if not sj then return end
    local idx = IDX .. sj
    -- Keys damaged by hand (another type) are left as they are: checks first.
    if key_type(idx) ~= 'hash' then return end
    local all_ok = key_type(ALL) == 'zset'
    redis.call('HDEL', idx, id)
    if redis.call('HLEN', idx) == 0 then
      redis.call('DEL', idx)
      if all_ok then redis.call('ZREM', ALL, sj) end
    end
  end
end)()
