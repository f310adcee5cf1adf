(function()
  -- Compliance: an erased job leaves its subject's index; an index left empty goes,
  -- with its subject's entry in `subjects` (the `erase` slot; see enqueue.lua).
  local IDX, ALL = PREFIX .. 'subj:', PREFIX .. 'subjects'
  return function(id, jk, ik)
    -- A job key damaged by hand (not a hash) names no subject.
    if key_type(jk) ~= 'hash' then return end
    local sj = redis.call('HGET', jk, 'sj')
    if not sj then return end
    local idx = IDX .. sj
    redis.call('HDEL', idx, id)
    if redis.call('HLEN', idx) == 0 then
      redis.call('DEL', idx)
      redis.call('ZREM', ALL, sj)
    end
  end
end)()
