(function()
  @PRELUDE@
  -- Marks a new job of a tenant (tn, tq) and counts it. A waiting job goes to wait when
  -- the tenant has room there (a free ticket, a free slot, rate left) and nothing in its
  -- lane; else it joins its lane. A delayed job meets admission when due.
  return function(id, jk, opts, st)
    local t = tenant_opts(opts)
    if not t then return nil end
    local s = state(t)
    -- A damaged count (false) is left as it is: the recount counts this job by its tq
    -- (at once when a pass is under way).
    if s.n == nil then s.n = count_of(redis.call('HGET', TN .. t, 'n')) or false end
    redis.call('HSET', jk, 'tn', t, 'tq', '1')
    if s.n then
      s.n = s.n + 1
      redis.call('HSET', TN .. t, 'n', int(s.n))
    else
      pass_count(t, jk, 1)
    end
    if st ~= 'waiting' then return nil end
    if not lane(s) and room(s) > 0 then
      if FAIR then
        redis.call('SADD', TK .. t, id)
        s.tk = s.tk + 1
        handed(s, id)
      end
      return nil
    end
    -- The first job of an empty lane, while the tenant's tickets are out and none of
    -- its jobs runs, under a cap or a rate: its holders may be ones another feature
    -- leaves in wait (a rate-limit key's window full), which hold no free slot in claim
    -- (room_limit). No job's end brings a claim: a wake-up does, which refills the lane.
    if FAIR and (s.mc > 0 or s.rlm > 0) and not lane(s) and tickets(s) > 0
        and running(s) == 0 then
      wake()
    end
    s.lane = true
    return 't:' .. t
  end
end)()
