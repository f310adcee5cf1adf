(function()
  @PRELUDE@
  local cur = nil
  -- Fair dispatch: the candidates of this call that held a ticket, as the watch
  -- fragment (watch.lua, the first admission check of all) found them: `seen` (id ->
  -- tenant, in `order`), `probe` the current candidate's id and whether it holds one.
  -- A ticket goes back here as its holder starts or joins its lane (`seen` cleared);
  -- one still out once the call's jobs are handed out belongs to a holder that another
  -- feature's check took out of wait, or to one still in wait (kept).
  -- `last`: the last candidate the watch saw (with a tenant or not).
  local seen, order, probe, probe_holder, last = {}, {}, nil, false, nil

  -- The holders other features parked in this call give their tickets back, and their
  -- tenants' lanes are refilled (admit_after: wait is no longer scanned). A job parked
  -- aside holds no room of its tenant: back in wait it starts if the tenant has a free
  -- ticket, else it waits its turn in the lane. Without this, a tenant whose cap its
  -- parked holders fill (max_concurrency 1: one held by an open breaker, or a job whose
  -- group's turn is held by the tenant's next job, waiting in its lane) would wait for
  -- good, or for the next sync's heal.
  -- A holder another feature's check left in wait (its rate-limit key's window full, a
  -- RateLimited hold: it waits there for its time) keeps its ticket and its place, but
  -- holds no free slot or rate of its tenant meanwhile (s.stuck, room_limit): the next
  -- jobs of the lane get them, within the tenant's ticket quota. Not the candidate a
  -- check stopped the claim at (admit_stop: a global cap, nothing else could start).
  local function give_back()
    local refill = {}
    for i = 1, #order do
      local id = order[i]
      local t = seen[id]
      local s = nil
      if t and not redis.call('ZSCORE', K_WAIT, id) then
        if redis.call('SREM', TK .. t, id) == 1 then
          s = state(t)
          if s.tk then s.tk = s.tk - 1 end
        end
      elseif t and not (ADMIT_STOP and id == last) then
        s = state(t)
        s.stuck = (s.stuck or 0) + 1
      end
      if s and not refill[t] then
        refill[t] = true
        refill[#refill + 1] = s
      end
    end
    seen, order = {}, {}
    for i = 1, #refill do top_up(refill[i]) end
  end

  local function watch(id, tn)
    last = id
    if not tn then return end
    probe, probe_holder = id, redis.call('SISMEMBER', TK .. tn, id) == 1
    if probe_holder then
      if not seen[id] then order[#order + 1] = id end
      seen[id] = tn
      admit_after('tn-tk', give_back)
    end
  end
  if FAIR then SLOT_SCRATCH['multi-tenancy'] = { watch = watch } end

  -- Whether candidate `id` of tenant `tn` holds a ticket (as the watch read it).
  local function holds(id, tn)
    if not FAIR then return false end
    if probe == id then return probe_holder end
    return redis.call('SISMEMBER', TK .. tn, id) == 1
  end

  -- Its ticket given back by a holder that starts or joins the tenant's lane.
  local function give(s, id)
    local out = tickets(s)
    redis.call('SREM', TK .. s.t, id)
    s.tk = out - 1
    seen[id] = nil
  end

  -- Counts a job that passed every check: its running slot, its rate start, its ticket
  -- given back; and, once the call's jobs are handed out, the tenant's tickets refilled
  -- from its lane (admit_after: claim scans wait while the checks run).
  local function commit(id, jk)
    local c = cur
    if not c then return end
    local s, t = c.s, c.s.t
    -- Counts read before the writes below (cached for the call, then kept up to date);
    -- the running count only matters to a tenant with a concurrency cap.
    if c.holder then give(s, id) end
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
    local holder = holds(id, tn)
    local blocked = false
    if s.mc > 0 and running(s) >= s.mc then
      blocked = true
    elseif s.rlm > 0 and window(s) >= s.rlm then
      blocked = true
      if s.reset then park_timer('t:' .. tn, s.reset, 1, s.rld) end
    elseif FAIR and not holder and tickets_within(s, s.quota) >= s.quota then
      -- It came to wait another way (promoted, retried, back from another blocker)
      -- while the tenant's tickets are all out: it waits its turn in the lane.
      blocked = true
    end
    if blocked then
      if holder then give(s, id) end
      s.lane = true
      admit_park('t:' .. tn, lane_score(jk))
      return false
    end
    cur = { s = s, holder = holder, counted = tq ~= nil and tq ~= false }
    return true, commit
  end
end)()
