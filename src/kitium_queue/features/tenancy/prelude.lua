  -- Multi-tenancy: the shared part of every fragment (kitium_queue.features.tenancy).
  -- Compiled in from the queue's declarations (the same in every process); QUOTAS false:
  -- tenants are tracked (counts, usage, unknown tenants and regions refused) and fair
  -- dispatch applies, but no quota (max_queue_size, max_concurrency, rate_limit) is.
  local QUANTUM, FAIR, QUOTAS = @QUANTUM@, @FAIR@, @QUOTAS@
  local MAX_TENANT_ID = @MAX_TENANT_ID@
  local MAX_TICKETS = @MAX_TICKETS@
  local MAX_PLACES = @MAX_PLACES@
  local REFILL_MIN = @REFILL_MIN@
  -- Keys (under the queue's hash tag; tenancy/keys.py builds the same names):
  --   tn:<t>      HASH  the tenant's quota in this queue, copied by TenantRegistry (v
  --                     version, on '1' while the tenant exists, mqs max_queue_size, mc
  --                     max_concurrency, rlm/rld rate limit, w weight, ar allowed regions
  --                     ',a,b,'; 0 / '' = none), and its counts (n unfinished jobs counted,
  --                     rw/rn the rate window: opened at, starts in it, done/fail totals)
  --   tn-run:<t>  SET   ids of its running jobs (from claim until they leave active)
  --   tn-tk:<t>   SET   ids of its jobs in wait that hold a dispatch ticket (fair dispatch)
  -- Blocker (lib_parking.lua): 't:<t>' is the tenant's lane: its jobs waiting for a
  -- ticket, a free concurrency slot or its next rate window, in queue order (priority,
  -- then enqueue order). Job-hash markers: tn = the job's tenant, tq = '1' while the
  -- job is counted in n, tr = the recount pass that counted it (tn_recount.lua; tn:<t>
  -- then holds rc the pass's id, rcn its count so far, rcc its cursor, rcs its server).
  --
  -- Fair dispatch: a tenant holds at most weight x QUANTUM tickets, MAX_PLACES at most
  -- (lua.py: half of claim's scan of wait, so that no tenant's holders, even all held
  -- back by another feature, hide the other tenants' jobs from it), and only its ticket
  -- holders sit in wait; the rest of its jobs wait in its lane. The holders that start
  -- are replaced from the lane at the back of wait (fresh places, REFILL_MIN at a time
  -- at least), so wait cycles through the tenants' tickets and each gets starts in
  -- proportion to its weight, whatever its backlog. A ticket is held in wait only: a
  -- holder another feature parks gives it back (admission.lua), as does one debounced
  -- into delayed (duplicate.lua); one that left another way is found at the limit
  -- (tickets_within) or by the sync's heal (tn_heal.lua). One that another feature
  -- leaves in wait keeps it, and holds no free slot meanwhile (room_limit).
  local TN = PREFIX .. 'tn:'
  local RUN = PREFIX .. 'tn-run:'
  local TK = PREFIX .. 'tn-tk:'
  local LANE = PREFIX .. 'parked:t:'

  -- The tenant (and region) of a job from its options JSON.
  local function tenant_opts(opts)
    if opts == nil or opts == false or opts == '' then return nil end
    if not string.find(opts, '"tenant_id"', 1, true) then return nil end
    local ok, o = pcall(cjson.decode, opts)
    if not ok or type(o) ~= 'table' then return nil end
    local t = o['tenant_id']
    if type(t) ~= 'string' or t == '' or #t > MAX_TENANT_ID then return nil end
    local r = o['region']
    if type(r) ~= 'string' or r == '' then r = nil end
    return t, r
  end

  -- A tenant's quota and counts, read once per script call and kept up to date here;
  -- in the slot fragments, one table for all of them (SLOT_SCRATCH, lua.py), so that
  -- what one fragment changes (a ticket given back by a debounce) is what the next one
  -- reads in the same call.
  local tenants = @STATES@
  local function state(t)
    local s = tenants[t]
    if s == nil then
      local f = redis.call('HMGET', TN .. t, 'mc', 'rlm', 'rld', 'w', 'rw', 'rn')
      local w = tonumber(f[4])
      if w == nil or w ~= w or w <= 0 then w = 1 end
      s = { t = t, mc = arg_int(f[1], 0, 0, 1000000000), rlm = arg_int(f[2], 0, 0, 1000000000),
            rld = arg_int(f[3], 0, 0, MAX_MS), rw = tonumber(f[5]), rn = num(f[6]) }
      s.quota = arg_int(w * QUANTUM + 0.5, 1, 1, MAX_PLACES)
      if s.rlm == 0 or s.rld == 0 or not QUOTAS then s.rlm = 0 end
      if not QUOTAS then s.mc = 0 end
      tenants[t] = s
    end
    return s
  end

  -- A tenant's count n as stored: a number, or nil when it holds something that is not
  -- a count (damaged outside kitium-queue). A damaged n is never written over (a write
  -- would start it again from 0, loosening max_queue_size): the accept fragment refuses
  -- the tenant's jobs where a max_queue_size applies, and the tenant's copy
  -- (TenantRegistry.sync(), and every worker within SYNC_INTERVAL_S) recounts it from
  -- the job records marked tq, in bounded steps (tn_recount.lua).
  local function count_of(raw)
    if not raw then return 0 end
    if #raw <= 15 and string.match(raw, '^%d+$') then return tonumber(raw) end
    return nil
  end

  -- While n is damaged a recount pass may be under way (tn_recount.lua: rc its id, rcn
  -- the jobs it counted so far). A job counted meanwhile (delta 1: tq set) is marked
  -- with the pass (job field tr) and added, so the pass's walk skips it; one that stops
  -- being counted (delta -1: tq deleted) is taken off if the pass had counted it (the
  -- walk no longer finds it counted otherwise). A pass whose rcn is no count is dropped:
  -- the next step starts a new one.
  local function pass_count(t, jk, delta)
    local f = redis.call('HMGET', TN .. t, 'rc', 'rcn')
    if not f[1] then return end
    local c = f[2] and count_of(f[2])
    if not c then
      redis.call('HDEL', TN .. t, 'rc', 'rcn', 'rcc', 'rcs')
      return
    end
    if delta > 0 then
      redis.call('HSET', jk, 'tr', f[1])
    elseif redis.call('HGET', jk, 'tr') ~= f[1] then
      return
    end
    c = c + delta
    if c < 0 then c = 0 end
    redis.call('HSET', TN .. t, 'rcn', int(c))
  end

  -- A counted job (marker tq) leaves the tenant's count of unfinished jobs (a damaged
  -- count is left as it is: the recount skips the job, whose tq is gone, and a pass
  -- under way that counted it takes it off) and, when it ended ('done' / 'fail'), adds
  -- to that total. Returns the tenant's max_concurrency (release.lua, tn_heal.lua).
  -- A tenant the queue holds no copy of (a removed tenant whose tombstone expired,
  -- tn_put.lua) has nothing to count: its key is not written again.
  local function leave_count(t, jk, total)
    redis.call('HDEL', jk, 'tq')
    -- The count read earlier in this call (enqueue.lua: a bulk add's next job adds to
    -- it) is read again: kept, its next write would undo this one.
    if tenants[t] then tenants[t].n = nil end
    local h = redis.call('HMGET', TN .. t, 'n', 'done', 'fail', 'mc', 'v')
    if not h[5] then return 0 end
    local n = count_of(h[1])
    if n then
      n = n - 1
      if n < 0 then n = 0 end
      redis.call('HSET', TN .. t, 'n', int(n))
    else
      pass_count(t, jk, -1)
    end
    if total == 'done' then
      redis.call('HSET', TN .. t, 'done', int(num(h[2]) + 1))
    elseif total == 'fail' then
      redis.call('HSET', TN .. t, 'fail', int(num(h[3]) + 1))
    end
    return arg_int(h[4], 0, 0, 1000000000)
  end

  -- Job m, found holding a ticket or a running slot of tenant t it no longer uses (a
  -- process without tenancy ran it): when it finished, it leaves the tenant's count as
  -- the release fragment would have done (tickets_within, tn_heal.lua).
  local ENDED = { completed = 'done', failed = 'fail', dlq = 'fail' }
  local function uncount(t, m)
    local f = redis.pcall('HMGET', job_key(m), 'st', 'tn', 'tq')
    if f.err or f[2] ~= t or not f[3] then return end
    local total = ENDED[f[1]]
    if not total then return end
    leave_count(t, job_key(m), total)
  end

  -- A tenant's running set found holding another type (damaged): recorded once per call
  -- in slot-errors (lib_parking.lua park_damaged, naming the key and the repair); its
  -- jobs wait in its lane, and its lane's timer brings one back every DAMAGED_RETRY_MS to
  -- try again (so they run by themselves once the key is deleted). Other tenants are
  -- not concerned.
  local DAMAGED_RETRY_MS = 60000
  local function run_damaged(s)
    park_damaged(RUN .. s.t, 'set', "delete it: tenant '" .. s.t .. "' then counts its " ..
      'running jobs again as they start (its max_concurrency is loose until the jobs ' ..
      'running now end); meanwhile its jobs wait in its lane, tried again every ' ..
      (DAMAGED_RETRY_MS / 1000) .. ' s, and other tenants are not concerned')
    if not s.bad then
      s.bad = true
      park_timer('t:' .. s.t, NOW + DAMAGED_RETRY_MS, 1, DAMAGED_RETRY_MS)
    end
  end

  -- A write to the tenant's running set (SADD / SREM): its reply, or nil when the set is
  -- damaged (recorded, nothing written).
  local function run_write(s, cmd, id)
    local r = redis.pcall(cmd, RUN .. s.t, id)
    if type(r) == 'table' and r.err then
      if not string.find(r.err, 'WRONGTYPE', 1, true) then error(r) end
      run_damaged(s)
      return nil
    end
    return r
  end

  -- Checks up to 3 random members of set `key` (of n members) while n >= limit, and
  -- removes those gone(m) says are stale; returns the count left.
  local function prune(key, n, limit, gone)
    local checks = 0
    while n >= limit and checks < 3 do
      checks = checks + 1
      local m = redis.call('SRANDMEMBER', key)
      if not m or not gone(m) then break end
      redis.call('SREM', key, m)
      n = n - 1
    end
    return n
  end

  -- A running-set member whose job is no longer active (a damaged record counts as
  -- running: recovery releases it when its lease ends).
  local function not_running(m)
    local st = redis.pcall('HGET', job_key(m), 'st')
    return not (st == 'active' or (st and type(st) ~= 'string'))
  end

  local function not_waiting(m)
    return not redis.call('ZSCORE', K_WAIT, m)
  end

  -- Its running jobs. Exact (every way a job leaves active passes the release fragment,
  -- which finds the tenant on the job's record); a member left behind (a record deleted
  -- by hand while it ran, a process without the feature) would hold a slot for good, so
  -- at the cap a few random members are checked and dropped when no longer active.
  local function running(s)
    if s.run == nil then
      local key = RUN .. s.t
      local n = redis.pcall('SCARD', key)
      if type(n) == 'table' then
        -- Damaged: the tenant counts as at its cap (its jobs go to its lane).
        run_damaged(s)
        n = 1000000000
      elseif s.mc > 0 then
        n = prune(key, n, s.mc, not_running)
      end
      s.run = n
    end
    return s.run
  end

  -- Its tickets out (fair dispatch), counted once per script call.
  local function tickets(s)
    if not FAIR then return 0 end
    if s.tk == nil then s.tk = redis.call('SCARD', TK .. s.t) end
    return s.tk
  end

  -- A ticket handed to a new job of this call (enqueue.lua): a bulk add puts its jobs
  -- in wait only at the end of the call, so it is not looked for there before.
  local function handed(s, id)
    if s.fresh == nil then s.fresh = {} end
    s.fresh[id] = true
  end

  -- Its tickets out, once they reach `most`: a ticket is meant for a job in wait, and
  -- a holder that left wait without giving it back (claimed by a process without
  -- tenancy, or taken out some way the fragments do not see) would hold the tenant's
  -- room for nothing. Up to 3 random holders are checked, once per call, and each one
  -- not in wait gives its ticket back (holders in wait are skipped, not a reason to
  -- stop). A `most` below the quota is the tenant's free slots or rate left: there,
  -- holders in wait at the limit are a busy tenant's usual state, and while a job of the
  -- tenant runs its end refills the lane again; so the check is made only while none
  -- runs (else the lane would wait for the sync's heal: max_concurrency 1, one ticket
  -- held that way).
  local function tickets_within(s, most)
    local n = tickets(s)
    if n == 0 or n < most or s.tk_checked then return n end
    if most < s.quota and running(s) > 0 then return n end
    s.tk_checked = true
    local ids = redis.call('SRANDMEMBER', TK .. s.t, 3)
    for i = 1, #ids do
      if not (s.fresh and s.fresh[ids[i]]) and not_waiting(ids[i]) then
        redis.call('SREM', TK .. s.t, ids[i])
        uncount(s.t, ids[i])
        n = n - 1
      end
    end
    s.tk = n
    return n
  end

  -- The rate window: used = starts in the current window, reset = when it ends.
  local function window(s)
    if s.used == nil then
      if s.rw and NOW < s.rw + s.rld then
        s.used, s.reset = s.rn, s.rw + s.rld
      else
        s.used, s.reset = 0, nil
      end
    end
    return s.used
  end

  -- Whether its lane holds jobs.
  local function lane(s)
    if s.lane == nil then s.lane = redis.call('EXISTS', LANE .. s.t) == 1 end
    return s.lane
  end

  -- How many of its jobs may sit in wait or run beyond those running now: its ticket
  -- quota (fair dispatch), within its free concurrency slots and what is left of its
  -- rate window (each ticket may start); and that room without s.stuck. s.stuck
  -- (admission.lua, set in claim): its holders that another feature's check left in
  -- wait in this call (their rate-limit key's window full, a RateLimited hold): they
  -- may not start, so the free slots and rate go to the next jobs of the lane, which
  -- may be held back in turn. So that such holders, sitting in wait, stay in proportion
  -- to the tenant's room, they add no more than that room again, or REFILL_MIN when it
  -- is less (max_concurrency 1: up to REFILL_MIN held back before the lane waits for
  -- their window), within the quota: MAX_PLACES at most, so that they fill half of
  -- claim's scan (1000 candidates at least) at most, whatever the tenant's cap, and
  -- another tenant's new job is never left beyond it waiting for their window.
  local function room_limit(s)
    local r = MAX_TICKETS
    if FAIR then r = s.quota end
    if s.mc > 0 and s.mc - running(s) < r then r = s.mc - running(s) end
    if s.rlm > 0 and s.rlm - window(s) < r then r = s.rlm - window(s) end
    local free = r
    if s.stuck then
      local extra = math.min(s.stuck, math.max(free, REFILL_MIN))
      r = free + extra
      if FAIR and r > s.quota then r = s.quota end
    end
    return r, free
  end

  -- How many more of its jobs may go to wait now: its limit less the tickets out (those
  -- held by jobs no longer in wait given back first, when they fill it); the limit; and
  -- the limit without the holders held back (room_limit).
  local function room(s)
    local r, free = room_limit(s)
    return r - tickets_within(s, r), r, free
  end

  -- A job's place in its lane: its wait score from priority and enqueue order.
  local function lane_score(jk)
    local f = redis.call('HMGET', jk, 'p', 'q')
    return int(wait_score(arg_int(f[1], 0, 0, 65535), num(f[2])))
  end

  -- Hand the tenant's free room to the first jobs of its lane: to the back of wait
  -- (fair dispatch: holding a ticket each), or to their places (quotas only). A full
  -- rate window arms a timer that brings one job back when the window ends (its start
  -- refills the rest).
  local function top_up(s)
    if s.lane == false then return end
    local r, _, free = room(s)
    if r <= 0 then
      if s.rlm > 0 and s.reset and window(s) >= s.rlm and lane(s) then
        park_timer('t:' .. s.t, s.reset, 1, s.rld)
      end
      return
    end
    local out = tickets(s)
    -- Refill REFILL_MIN at a time at least (a share of the fixed cost of a refill per
    -- job), unless the tenant has no ticket out at all; or half its limit, when that is
    -- less (a max_concurrency or a rate below 2 x REFILL_MIN: REFILL_MIN free at once
    -- would come only with every ticket back, one holder that cannot start yet holding
    -- up the rest of its free room). The limit without the holders held back in wait
    -- (room_limit): counted in, they would raise the bar above the free slots they
    -- leave (max_concurrency 1, two held back: 1 free, 2 asked for), and the lane would
    -- wait for their window.
    if FAIR and out > 0 and r < math.min(REFILL_MIN, math.ceil(free / 2)) then return end
    local ids = {}
    local moved = unpark('t:' .. s.t, r, FAIR, ids)
    if moved < r then s.lane = false end
    if FAIR and moved > 0 then
      for i = 1, #ids, 500 do
        redis.call('SADD', TK .. s.t, unpack(ids, i, math.min(i + 499, #ids)))
      end
      s.tk = out + moved
    end
  end
