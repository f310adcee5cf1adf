(function()
  @PRELUDE@
  local ENDS = { completed = 'done', failed = 'fail', removed = false }

  -- Every job leaving active gives its running slot back; a job that ends (completed,
  -- failed for good, removed) leaves the tenant's count, and a removed one that had not
  -- started gives its ticket back. Then the tenant's lane refills what became free: a
  -- concurrency slot or a ticket (tickets taken by starts are refilled by claim). The
  -- tenant is read from the job's record (a record deleted by hand while the job ran
  -- leaves its running slot to the heal in running()).
  return function(id, jk, outcome)
    local total = ENDS[outcome]
    local f
    if total ~= nil then
      f = redis.pcall('HMGET', jk, 'tn', 'tq')
    else
      f = { redis.pcall('HGET', jk, 'tn') }
    end
    if f.err or type(f[1]) ~= 'string' then return end
    local t = f[1]
    -- A damaged running set (recorded) frees nothing; the counts below still change.
    local freed = run_write(tenants[t] or { t = t }, 'SREM', id) == 1
    local known = tenants[t]
    if freed and known and known.run then known.run = known.run - 1 end
    local mc = nil
    if total ~= nil and f[2] then
      mc = leave_count(t, jk, total)
    end
    if total == false and not freed and FAIR and redis.call('SREM', TK .. t, id) == 1 then
      -- A ticket holder removed before it started: its ticket goes to the next job.
      local s = state(t)
      if s.tk then s.tk = s.tk - 1 end
      top_up(s)
    elseif freed and (mc == nil or mc > 0) then
      -- A running slot came free: it matters to a tenant with a concurrency cap.
      local s = state(t)
      if s.mc > 0 then top_up(s) end
    end
  end
end)()
