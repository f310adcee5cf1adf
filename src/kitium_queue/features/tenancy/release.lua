(function()
  @PRELUDE@
  local ENDS = { completed = 'done', failed = 'fail', removed = false }

  -- Every job leaving active gives its running slot back; a job that ends (completed,
  -- failed for good, removed) leaves the tenant's count, and a removed one that had not
  -- started gives its ticket back. Then the tenant's lane refills what became free: a
  -- concurrency slot or a ticket (tickets taken by starts are refilled by claim).
  return function(id, jk, outcome)
    local t = redis.call('HGET', OWNER, id)
    local s, freed = nil, false
    if t then
      redis.call('HDEL', OWNER, id)
      s = state(t)
      if redis.call('SREM', RUN .. t, id) == 1 then
        if s.run then s.run = s.run - 1 end
        freed = s.mc > 0
      end
    end
    local total = ENDS[outcome]
    if total ~= nil then
      local f = redis.pcall('HMGET', jk, 'tn', 'tq')
      if f.err then f = {} end
      local tn = t or f[1]
      if tn then
        if f[2] then
          redis.call('HDEL', jk, 'tq')
          local h = redis.call('HMGET', TN .. tn, 'n', 'done', 'fail')
          local n = num(h[1]) - 1
          if n < 0 then n = 0 end
          if total == 'done' then
            redis.call('HSET', TN .. tn, 'n', int(n), 'done', int(num(h[2]) + 1))
          elseif total == 'fail' then
            redis.call('HSET', TN .. tn, 'n', int(n), 'fail', int(num(h[3]) + 1))
          else
            redis.call('HSET', TN .. tn, 'n', int(n))
          end
        end
        if not t and FAIR and redis.call('SREM', TK .. tn, id) == 1 then
          s = state(tn)
          if s.tk then s.tk = s.tk - 1 end
          freed = true
        end
      end
    end
    if freed then top_up(s) end
  end
end)()
