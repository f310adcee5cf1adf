--[[
  tn_heal.lua — give back the dispatch tickets and running slots of tenants held by jobs
  that already left wait or active without passing the tenancy fragments
  (kitium_queue.features.tenancy), for up to 100 tenants per call.

  A process of the queue without tenancy (a worker of the previous release during a
  rolling deploy) claims a tenant's ticket holders from wait and finishes them without
  the release fragment: their tickets stay out and the tenant's count of unfinished
  jobs keeps them. Once every ticket (or running slot) of a tenant is held that way its
  lane is never refilled, and its jobs wait for good. The fragments prune a few such
  holders when they meet the tenant at its limit; this walk checks every holder of the
  tenants that have a lane (and of removed tenants, lane or not), takes the stale ones
  off (a finished job also leaves the tenant's count, as release would have done) and
  refills the lane.

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4..] tenant ids (at most 100 are read).
  Returns { stale tickets, stale running slots, jobs moved to wait } over the tenants.
  A tenant whose keys hold other types (damaged by hand) is skipped.
]]
--@include lib_base
--@include lib_jobs
--@include lib_events
--@include lib_parking
--@include lib_park_timers
@PRELUDE@

local ENDED = { completed = 'done', failed = 'fail', dlq = 'fail' }
-- Holders checked per set and tenant.
local CHECK = 1000

-- Job m left the tenant's sets: when it finished, it leaves the tenant's count too.
local function uncount(t, m)
  local f = redis.pcall('HMGET', job_key(m), 'st', 'tn', 'tq')
  if f.err or f[2] ~= t or not f[3] then return end
  local total = ENDED[f[1]]
  if not total then return end
  leave_count(t, job_key(m), total)
end

-- Takes off the members of set `key` that `gone` says are stale; returns how many.
local function sweep(t, key, gone)
  local n = redis.pcall('SCARD', key)
  if type(n) ~= 'number' or n == 0 then return 0 end
  local ids
  if n <= CHECK then ids = redis.call('SMEMBERS', key) else ids = redis.call('SRANDMEMBER', key, CHECK) end
  local stale = 0
  for i = 1, #ids do
    if gone(ids[i]) then
      redis.call('SREM', key, ids[i])
      uncount(t, ids[i])
      stale = stale + 1
    end
  end
  return stale
end

local tickets_out, slots, moved = 0, 0, 0
for i = 4, math.min(#ARGV, 103) do
  local t = ARGV[i]
  if t ~= '' and #t <= MAX_TENANT_ID and key_type(TN .. t) == 'hash' then
    local lane_key = LANE .. t
    local before = redis.pcall('ZCARD', lane_key)
    if type(before) ~= 'number' then before = 0 end
    -- A removed tenant (tombstone): its stale holders are taken off with or without a
    -- lane, so that its copy can be retired once nothing of it is left (tn_put.lua).
    if before > 0 or redis.call('HGET', TN .. t, 'on') ~= '1' then
      if FAIR then tickets_out = tickets_out + sweep(t, TK .. t, not_waiting) end
      slots = slots + sweep(t, RUN .. t, not_running)
      local s = state(t)
      s.tk, s.run, s.lane = nil, nil, nil
      top_up(s)
      local after = redis.pcall('ZCARD', lane_key)
      if type(after) == 'number' and after < before then moved = moved + before - after end
    end
  end
end
return { tickets_out, slots, moved }
