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

  A ticket held by a job that has not started and is out of wait (parked behind another
  feature's blocker, or delayed: a producer without tenancy debounced it) is no sign
  of a process that ran the tenant's jobs without tenancy: another feature took it out
  of wait in a way the fragments did not see (they give such tickets back at once
  where they do: admission.lua, duplicate.lua). It is given back too, counted apart,
  so that the caller does not warn about it.

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4..] tenant ids (at most 100 are read).
  Returns { stale tickets, stale running slots, jobs moved to wait, tickets of jobs
  parked aside or delayed } over the tenants (the first counts only tickets of jobs
  that ran or are gone). A tenant whose keys hold other types (damaged by hand) is
  skipped.
]]
--@include lib_base
--@include lib_jobs
--@include lib_events
--@include lib_parking
--@include lib_park_timers
@PRELUDE@

-- Holders checked per set and tenant.
local CHECK = 1000

-- Whether job m, a stale ticket holder, is one another feature took out of wait: it has
-- not started (parked behind a blocker, or delayed).
local ASIDE = { pending = true, delayed = true }
local function aside(m)
  local st = redis.pcall('HGET', job_key(m), 'st')
  return type(st) == 'string' and ASIDE[st] == true
end

-- Takes off the members of set `key` that `gone` says are stale (a finished one leaves
-- the tenant's count too: uncount, prelude.lua); returns how many, and how many of them
-- `apart` (when given) says to count apart.
local function sweep(t, key, gone, apart)
  local n = redis.pcall('SCARD', key)
  if type(n) ~= 'number' or n == 0 then return 0, 0 end
  local ids
  if n <= CHECK then ids = redis.call('SMEMBERS', key) else ids = redis.call('SRANDMEMBER', key, CHECK) end
  local stale, other = 0, 0
  for i = 1, #ids do
    if gone(ids[i]) then
      redis.call('SREM', key, ids[i])
      if apart and apart(ids[i]) then
        other = other + 1
      else
        uncount(t, ids[i])
        stale = stale + 1
      end
    end
  end
  return stale, other
end

local tickets_out, slots, moved, parked = 0, 0, 0, 0
for i = 4, math.min(#ARGV, 103) do
  local t = ARGV[i]
  if t ~= '' and #t <= MAX_TENANT_ID and key_type(TN .. t) == 'hash' then
    local lane_key = LANE .. t
    local before = redis.pcall('ZCARD', lane_key)
    if type(before) ~= 'number' then before = 0 end
    -- A removed tenant (tombstone): its stale holders are taken off with or without a
    -- lane, so that its copy can be retired once nothing of it is left (tn_put.lua).
    if before > 0 or redis.call('HGET', TN .. t, 'on') ~= '1' then
      if FAIR then
        local stale, other = sweep(t, TK .. t, not_waiting, aside)
        tickets_out, parked = tickets_out + stale, parked + other
      end
      slots = slots + sweep(t, RUN .. t, not_running)
      local s = state(t)
      s.tk, s.run, s.lane = nil, nil, nil
      top_up(s)
      local after = redis.pcall('ZCARD', lane_key)
      if type(after) == 'number' and after < before then moved = moved + before - after end
    end
  end
end
return { tickets_out, slots, moved, parked }
