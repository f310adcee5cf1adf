(function()
  @PRELUDE@
  -- The duplicate slot (an add whose idempotency key points to a job already there), in
  -- two fragments around the one that acts on that job (order 0: a debounce). A job
  -- that holds its group's turn in wait and that a debounce with a delay moves to
  -- delayed has not started: it gives its turn back, as a delayed job holds none, and
  -- the line goes on; when due it takes a free turn or its place in the line by
  -- priority and enqueue order. Kept, the turn would hold the whole group for the
  -- delay, and for good while the key keeps being added. Only a move from wait counts:
  -- a job delayed for a retry (or RetryLater) has started and keeps its turn.
  local NOTE = 'fifo-groups:debounced'
  return function(existing, name, data, opts, delay, ik)
    if @BEFORE@ then SLOT_SCRATCH[NOTE] = nil end
    if delay <= 0 then return nil end
    local f = redis.pcall('HMGET', job_key(existing), 'st', 'gk')
    if f.err or type(f[2]) ~= 'string' then return nil end
    if @BEFORE@ then
      SLOT_SCRATCH[NOTE] = f[1] == 'waiting' and existing or nil
      return nil
    end
    local was = SLOT_SCRATCH[NOTE]
    SLOT_SCRATCH[NOTE] = nil
    if was ~= existing or f[1] ~= 'delayed' then return nil end
    local g = f[2]
    if redis.call('SREM', RUN .. g, existing) == 0 then return nil end
    redis.call('HDEL', OWNER, existing)
    local s = redis.call('HMGET', GP .. g, 'paused', 'conc')
    if s[1] ~= '1' then
      hand_turns(g, conc_of(s[2]) - redis.call('SCARD', RUN .. g))
    end
    return nil
  end
end)()
