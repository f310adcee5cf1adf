(function()
  @PRELUDE@
  local groups = {}
  local cur = nil

  -- A group's settings and turns, read once per claim call and kept up to date by commit.
  local function state(g)
    local s = groups[g]
    if s == nil then
      local f = redis.call('HMGET', GP .. g, 'paused', 'conc', 'rlm', 'rld', 'rw', 'rn')
      s = { paused = f[1] == '1', conc = conc_of(f[2]),
            rlm = arg_int(f[3], 0, 0, 1000000000), rld = arg_int(f[4], 0, 0, MAX_MS),
            running = redis.call('SCARD', RUN .. g) }
      if s.rlm > 0 and s.rld > 0 then
        local w = tonumber(f[5])
        if w and NOW < w + s.rld then
          s.used, s.reset = num(f[6]), w + s.rld
        else
          s.used, s.reset = 0, nil
        end
      else
        s.rlm = 0
      end
      groups[g] = s
    end
    return s
  end

  -- Turns held by jobs that are gone or finished (turn_stale, prelude.lua): checked
  -- only when the group looks full, a few holders at a time, and given back.
  local function heal(g, s)
    s.running = heal_turns(g, s.running, s.conc, 3)
  end

  local function commit(id, jk)
    local c = cur
    if not c then return end
    local s = c.s
    if not c.open then
      take_turn(c.g, id)
      s.running = s.running + 1
      if not COUNT then redis.call('ZADD', INDEX, 0, c.g) end
    end
    if s.rlm > 0 then
      s.used = s.used + 1
      if s.used == 1 then
        s.reset = NOW + s.rld
        redis.call('HSET', GP .. c.g, 'rw', NOW_S, 'rn', 1)
      else
        redis.call('HSET', GP .. c.g, 'rn', int(s.used))
      end
    end
  end

  return function(id, jk, opts, gk, gm)
    cur = nil
    if not gk then return true end
    local s = state(gk)
    if COUNT and not gm then
      -- Back from a finished state (retry_job, replay): counted again at its first
      -- admission, also when it parks in the line (paused, full, over the rate).
      local gkey = GP .. gk
      redis.call('HSET', jk, 'gm', '1')
      redis.call('HSET', gkey, 'n', int(num(redis.call('HGET', gkey, 'n')) + 1))
      redis.call('ZADD', INDEX, 0, gk)
      redis.call('PERSIST', gkey)
    end
    local open = redis.call('SISMEMBER', RUN .. gk, id) == 1
    if s.paused then
      if open then admit_park('gh:' .. gk) else admit_park('g:' .. gk, line_score(jk)) end
      return false
    end
    if not open and s.running >= s.conc then
      heal(gk, s)
      if s.running >= s.conc then
        admit_park('g:' .. gk, line_score(jk))
        return false
      end
    end
    if s.rlm > 0 and s.used >= s.rlm and s.reset then
      -- Over the group's rate: held (keeping a turn it holds) until the window ends.
      park_timer('gr:' .. gk, s.reset, 0, 0)
      admit_park('gr:' .. gk)
      return false
    end
    cur = { g = gk, s = s, open = open }
    return true, commit
  end
end)()
