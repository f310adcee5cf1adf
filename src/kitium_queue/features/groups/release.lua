(function()
  @PRELUDE@
  -- Only an outcome that ends the job gives its turn back: a retry (backoff), a
  -- RetryLater, a stall or a hand-back keep the group waiting for this job.
  local ENDS = { completed = 'done', failed = 'fail', removed = false }

  return function(id, jk, outcome)
    local total = ENDS[outcome]
    if total == nil then return end
    local f = redis.pcall('HMGET', jk, 'gk', 'gm', 'n')
    if f.err then f = {} end
    -- A job of no group (its record is there, without a group): nothing else to read.
    if f[3] and not f[1] then return end
    local g = redis.call('HGET', OWNER, id)
    local gk = g or f[1]
    if not gk then return end
    local gkey = GP .. gk
    if COUNT then
      local h = redis.call('HMGET', gkey, 'n', 'done', 'fail')
      if f[2] then
        local n = num(h[1]) - 1
        if n < 0 then n = 0 end
        redis.call('HSET', gkey, 'n', int(n))
        redis.call('HDEL', jk, 'gm')
      end
      if total == 'done' then
        redis.call('HSET', gkey, 'done', int(num(h[2]) + 1))
      elseif total == 'fail' then
        redis.call('HSET', gkey, 'fail', int(num(h[3]) + 1))
      end
    end
    if g then
      redis.call('SREM', RUN .. g, id)
      redis.call('HDEL', OWNER, id)
      local s = redis.call('HMGET', gkey, 'paused', 'conc')
      if s[1] ~= '1' then
        hand_turns(g, conc_of(s[2]) - redis.call('SCARD', RUN .. g))
      end
    end
    maybe_forget(gk)
  end
end)()
