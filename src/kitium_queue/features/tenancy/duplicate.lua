(function()
  @PRELUDE@
  -- Fair dispatch: runs after the fragments that act on the job an idempotency key
  -- already points to (lua.py DUPLICATE_ORDER). A tenant's ticket holder such a fragment
  -- took out of wait (a debounce with a delay moves it to delayed, data replaced) gives
  -- its ticket back, and the tenant's lane is refilled: when due it meets admission as
  -- any delayed job (a free ticket, or its turn in the lane). Kept, the ticket would
  -- hold the tenant's room for the whole delay (max_concurrency 1: every other job of
  -- the tenant waiting in its lane). Only a duplicate with a delay can move a job there.
  return function(existing, name, data, opts, delay, ik)
    if delay <= 0 then return nil end
    local f = redis.pcall('HMGET', job_key(existing), 'tn', 'st')
    if f.err or type(f[1]) ~= 'string' or f[2] == 'waiting' then return nil end
    if redis.call('SREM', TK .. f[1], existing) == 1 then
      -- One a process without tenancy ran to its end (the idempotency fragment adds a
      -- new job then): it leaves the tenant's count, as release would have done; it
      -- holds nothing left for the heal to find it by.
      uncount(f[1], existing)
      local s = state(f[1])
      s.tk = nil
      top_up(s)
    end
    return nil
  end
end)()
