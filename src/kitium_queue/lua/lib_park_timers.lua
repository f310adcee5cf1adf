--[[
  lib_park_timers.lua — fragment: time-based blockers of parked jobs (a rate-limit
  window, a hold, a delay until a group may go on). Included by the composed slots
  (lib_slots.lua) and by claim.lua when any slot is filled; nothing polls: claim serves
  due timers in its promote step, and its wake_in covers the earliest one, so idle
  workers sleep until then.

  park_timer(blocker, due, n, every)
      Make `blocker` a time-based one: at `due` (ms) claim unparks n of its jobs (0: as
      many as one call may, UNPARK_MAX), then again every `every` ms while jobs remain
      behind it (0: at the next claim). An earlier pending due time is kept.
  fire_timers() -> moved      claim's step: serve due timers (at most TIMERS_MAX, moving
                              at most UNPARK_MAX jobs per call)
  next_timer() -> ms | nil    the earliest timer

  Keys: <prefix>park:timers (ZSET blocker -> due ms) and <prefix>park:rules (HASH
  blocker -> "<n> <every> <due>"), see lib_parking.lua. Either one holding another type
  (damaged) fails no call: it is skipped and recorded (park_call, lib_parking.lua).
]]
--@include lib_base
--@include lib_parking

local TIMERS_MAX = 100

-- Timers armed by this call, so parking many jobs behind one blocker reads its timer once.
local ARMED = {}

local function set_timer(blocker, due, n, every)
  park_call('timers', 'ZADD', K_PARK_TIMERS, int(due), blocker)
  park_call('rules', 'HSET', K_PARK_RULES, blocker, int(n) .. ' ' .. int(every) .. ' ' .. int(due))
end

local function park_timer(blocker, due, n, every)
  due = arg_int(due, NOW, 0, MAX_MS)
  n = arg_int(n, 0, 0, UNPARK_MAX)
  every = arg_int(every, 0, 0, MAX_MS)
  local armed = ARMED[blocker]
  if armed and armed <= due then return end
  local rule = park_call('rules', 'HGET', K_PARK_RULES, blocker)
  local cur = rule and tonumber(string.match(rule, '^%d+ %d+ (%d+)$'))
  if cur and cur < due then due = cur end
  set_timer(blocker, due, n, every)
  ARMED[blocker] = due
end

local function fire_timers()
  local due = park_call('timers', 'ZRANGEBYSCORE', K_PARK_TIMERS, '-inf', NOW_S, 'LIMIT', 0,
    TIMERS_MAX) or {}
  local budget, moved = UNPARK_MAX, 0
  for i = 1, #due do
    -- Out of budget: the timers left stay due, so the next call serves them.
    if budget <= 0 then break end
    local blocker = due[i]
    local n, every = string.match(park_call('rules', 'HGET', K_PARK_RULES, blocker) or '',
      '^(%d+) (%d+)')
    n, every = tonumber(n) or 0, tonumber(every) or 0
    local take = n
    if take <= 0 or take > budget then take = budget end
    local m = unpark(blocker, take)
    budget, moved = budget - m, moved + m
    if m > 0 and redis.call('EXISTS', PARKED_PREFIX .. blocker) == 1 then
      -- Armed again by its own rule (n, not what this call's budget let out): a rule
      -- that changed here would read as another declaration's (flowpark.py).
      set_timer(blocker, NOW + every, n, every)
    else
      park_call('timers', 'ZREM', K_PARK_TIMERS, blocker)
      park_call('rules', 'HDEL', K_PARK_RULES, blocker)
    end
  end
  return moved
end

local function next_timer()
  local t = park_call('timers', 'ZRANGE', K_PARK_TIMERS, 0, 0, 'WITHSCORES')
  if t and t[2] then return tonumber(t[2]) end
  return nil
end
