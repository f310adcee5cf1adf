  -- FIFO message groups: the shared part of every fragment (kitium_queue.features.groups).
  -- Configuration, compiled in from the manager's declarations (the same in every process):
  local DEFAULT_CONC, DEFAULT_MAX, COUNT = @DEFAULT_CONC@, @DEFAULT_MAX@, @COUNT@
  local MAX_GROUP_ID = @MAX_GROUP_ID@
  -- Keys (under the queue's hash tag; kitium_queue.features.groups.keys builds the same):
  --   grp:<g>      HASH  settings (paused, conc, max, rlm, rld), the rate window (rw, rn),
  --                      n = unfinished jobs counted, done / fail = totals
  --   grp-run:<g>  SET   ids of the jobs holding a turn: from when they go to wait as
  --                      the group's next job (or are first admitted) until they
  --                      complete, fail for good or are removed
  --   grp-of       HASH  job id -> group, for the jobs holding a turn
  --   groups       ZSET  index of the groups (score 0, paged by name)
  -- Blockers (lib_parking.lua): 'g:<g>' the group's line (jobs waiting for a turn, in
  -- line order: priority, then enqueue order), 'gh:<g>' jobs holding a turn while the
  -- group is paused, 'gr:<g>' jobs holding a turn over the group's rate limit (a timer).
  -- Job-hash markers: gk = the job's group, gm = '1' while it is counted in n.
  local GP = PREFIX .. 'grp:'
  local RUN = PREFIX .. 'grp-run:'
  local OWNER = PREFIX .. 'grp-of'
  local INDEX = PREFIX .. 'groups'
  -- How long an empty group's totals are kept (ms).
  local EMPTY_TTL = 86400000
  local LINE = PREFIX .. 'parked:g:'

  -- Why key `key` of group g (of type `want`) cannot be used: nil when it is of that
  -- type or absent. The admin scripts check their keys with it before the first write,
  -- so a key damaged by hand (another type) fails them whole, never half way.
  local function damaged(g, key, want)
    local t = redis.call('TYPE', key)['ok']
    if t == want or t == 'none' then return nil end
    return 'KQ_BAD_STATE message group ' .. g .. ': key ' .. key .. ' holds a ' .. t ..
      ', not a ' .. want .. ' (damaged by hand?); nothing was written. Delete or ' ..
      'repair that key, then try again'
  end

  local function group_damage(g)
    return damaged(g, GP .. g, 'hash') or damaged(g, RUN .. g, 'set')
      or damaged(g, OWNER, 'hash') or damaged(g, INDEX, 'zset')
      or damaged(g, LINE .. g, 'zset') or damaged(g, PREFIX .. 'parked:gh:' .. g, 'zset')
      or damaged(g, PREFIX .. 'parked:gr:' .. g, 'zset')
  end

  local function group_of(opts)
    if opts == nil or opts == false or opts == '' then return nil end
    if not string.find(opts, '"message_group_id"', 1, true) then return nil end
    local ok, o = pcall(cjson.decode, opts)
    if not ok or type(o) ~= 'table' then return nil end
    local g = o['message_group_id']
    if type(g) ~= 'string' or g == '' or #g > MAX_GROUP_ID then return nil end
    return g
  end

  -- The group's concurrency: its own setting, else the declared default.
  local function conc_of(v)
    return arg_int(v, DEFAULT_CONC, 1, 1000000)
  end

  -- Whether job m no longer holds a turn of group g: its record is gone, finished
  -- (completed, failed for good, dead-lettered) or of another group. A process without
  -- this feature finishes a group's job without giving its turn back; a record deleted
  -- by hand leaves its turn too. A damaged record (pcall) counts as holding: recovery
  -- deals with it.
  local function turn_stale(g, m)
    local f = redis.pcall('HMGET', job_key(m), 'st', 'gk')
    if f.err then return false end
    local st = f[1]
    return not (st and st ~= 'completed' and st ~= 'failed' and st ~= 'dlq' and f[2] == g)
  end

  -- Give back stale turns of group g while it looks full (`held` turns out of `conc`):
  -- up to `checks` random holders checked, stopping at the first that still holds.
  -- Returns the turns still held.
  local function heal_turns(g, held, conc, checks)
    local n = 0
    while held >= conc and n < checks do
      n = n + 1
      local m = redis.call('SRANDMEMBER', RUN .. g)
      if not m then return 0 end
      if not turn_stale(g, m) then break end
      redis.call('SREM', RUN .. g, m)
      redis.call('HDEL', OWNER, m)
      held = held - 1
    end
    return held
  end

  -- Give job `id` a turn of group g.
  local function take_turn(g, id)
    redis.call('SADD', RUN .. g, id)
    redis.call('HSET', OWNER, id, g)
  end

  -- Hand up to n free turns of group g to the first jobs of its line: they go to the
  -- back of wait (fresh: groups take turns), each holding its turn.
  local function hand_turns(g, n)
    if n <= 0 then return 0 end
    local ids = redis.call('ZRANGE', LINE .. g, 0, n - 1)
    for i = 1, #ids do take_turn(g, ids[i]) end
    return unpark('g:' .. g, #ids, true)
  end

  -- (release.lua, group_admin.lua) An empty group without settings leaves the index; its hash (its totals) expires a
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

  -- A job's place in its group's line: its wait score from priority and enqueue order.
  local function line_score(jk)
    local f = redis.call('HMGET', jk, 'p', 'q')
    return int(wait_score(arg_int(f[1], 0, 0, 65535), num(f[2])))
  end
