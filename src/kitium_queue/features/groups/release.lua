(function()
  @PRELUDE@
  -- Only an outcome that ends the job gives its turn back: a retry (backoff), a
  -- RetryLater, a stall or a hand-back keep the group waiting for this job.
  local ENDS = { completed = 'done', failed = 'fail', removed = false }

  -- An empty group without settings leaves the index; its hash (its totals) expires a
  -- day later unless a new job comes (the enqueue fragment keeps it then).
  local function maybe_forget(g)
    local gkey = GP .. g
    local f = redis.call('HMGET', gkey, 'n', 'paused', 'conc', 'max', 'rlm')
    if COUNT and num(f[1]) > 0 then return end
    if f[2] or f[3] or f[4] or f[5] then return end
    if redis.call('SCARD', RUN .. g) > 0 or redis.call('EXISTS', LINE .. g) == 1 then return end
    if not COUNT then
      -- Without counts, jobs not yet in the line (delayed, or waiting for a first
      -- admission) are not known here: keep the index entry, drop only the hash.
      redis.call('DEL', gkey)
      return
    end
    redis.call('PEXPIRE', gkey, EMPTY_TTL)
    redis.call('ZREM', INDEX, g)
  end

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
