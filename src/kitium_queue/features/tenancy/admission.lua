(function()
  @PRELUDE@
  local cur = nil

  -- Counts a job that passed every check: its running slot, its rate start, its ticket
  -- given back; and, once the call's jobs are handed out, the tenant's tickets refilled
  -- from its lane (admit_after: claim scans wait while the checks run).
  local function commit(id, jk)
    local c = cur
    if not c then return end
    local s, t = c.s, c.s.t
    -- Counts read before the writes below (cached for the call, then kept up to date);
    -- the running count only matters to a tenant with a concurrency cap.
    if c.holder then
      local out = tickets(s)
      redis.call('SREM', TK .. t, id)
      s.tk = out - 1
    end
    local run = s.mc > 0 and running(s)
    -- A damaged running set (only a tenant without max_concurrency gets here with one):
    -- the job runs, uncounted there, and the key is recorded (run_write).
    if run_write(s, 'SADD', id) and run then s.run = run + 1 end
    if s.rlm > 0 then
      s.used = window(s) + 1
      if s.used == 1 then
        s.reset = NOW + s.rld
        s.rw, s.rn = NOW, 1
        redis.call('HSET', TN .. t, 'rw', NOW_S, 'rn', 1)
      else
        s.rn = s.used
        redis.call('HSET', TN .. t, 'rn', int(s.used))
      end
    end
    if not c.counted then
      -- Back from a finished state (retry_job, replay_dlq): counted again, unless the
      -- queue holds no copy of its tenant (removed, its tombstone expired: tn_put.lua).
      local h = redis.call('HMGET', TN .. t, 'n', 'v')
      if h[2] then
        redis.call('HSET', jk, 'tq', '1')
        local n = count_of(h[1])
        if n then
          redis.call('HSET', TN .. t, 'n', int(n + 1))
        else
          pass_count(t, jk, 1)
        end
      end
    end
    -- Fair dispatch: the ticket it held goes to the next job of its lane. Without it a
    -- lane holds only jobs over a cap or a rate: a start frees no slot, but the first
    -- start of a window (its timer brought one job back) leaves room for more.
    if FAIR or s.rlm > 0 then admit_after('tn:' .. t, function() top_up(s) end) end
  end

  -- A job of a tenant may start while the tenant is under its max_concurrency and its
  -- rate, and (fair dispatch) holds a ticket or finds one free. Otherwise it goes back
  -- to its lane, at its place; a full rate window arms the lane's timer.
  return function(id, jk, opts, tn, tq)
    cur = nil
    if not tn then return true end
    local s = state(tn)
    local holder = FAIR and redis.call('SISMEMBER', TK .. tn, id) == 1
    local blocked = false
    if s.mc > 0 and running(s) >= s.mc then
      blocked = true
    elseif s.rlm > 0 and window(s) >= s.rlm then
      blocked = true
      if s.reset then park_timer('t:' .. tn, s.reset, 1, s.rld) end
    elseif FAIR and not holder and tickets(s) >= s.quota then
      -- It came to wait another way (promoted, retried, back from another blocker)
      -- while the tenant's tickets are all out: it waits its turn in the lane.
      blocked = true
    end
    if blocked then
      if holder then
        local out = tickets(s)
        redis.call('SREM', TK .. tn, id)
        s.tk = out - 1
      end
      s.lane = true
      admit_park('t:' .. tn, lane_score(jk))
      return false
    end
    cur = { s = s, holder = holder, counted = tq ~= nil and tq ~= false }
    return true, commit
  end
end)()
