--[[
  schedule_keys.lua — fragment shared by the schedule scripts (--@include schedule_keys).
  Key names mirror kitium_queue.keys.QueueKeys; all share the queue's hash tag through
  PREFIX.

    <prefix>schedules          ZSET  every schedule id, score = creation time (ms)
    <prefix>schedules:due      ZSET  active (not paused, not finished) schedules,
                                     score = nominal time of the next tick (ms)
    <prefix>schedule:<id>      HASH  one schedule:
        def   definition JSON (what get_schedule returns, minus runtime state)
        sig   timing signature; a change resets the next due time
        n d o p l   job name, encoded data, job options JSON, priority, lifo
        lim   run limit (0 = none)      v     version, bumped by every change
        due   nominal next tick ('' = finished)
        cnt   ticks enqueued            skip  ticks skipped (overlap)
        last  last tick enqueued        lj    id of the job of that tick
        paused '1' when paused          done  '1' when finished (limit or end date)
        ca ua created / updated at (ms)
    <prefix>schedules:changed  pub/sub channel: a schedule was created, changed or
                               removed (schedulers re-read their next due time)

  next_version(v)       a schedule's next version (a damaged one is replaced)
  schedule_damaged(sk)  KQ_DAMAGED_KEY when a key a schedule script writes is damaged
]]
--@include lib_base

local K_SCHEDULES = PREFIX .. 'schedules'
local K_SCHED_DUE = PREFIX .. 'schedules:due'
local SCHED_CHANNEL = PREFIX .. 'schedules:changed'

local function schedule_key(id)
  return PREFIX .. 'schedule:' .. id
end

-- The version after `v` (the stored one, HMGET). Not HINCRBY: it fails on a damaged
-- (non-integer) version after the call's first write. Such a version is replaced by the
-- time in ms, above any counted one, so no scheduler's compare-and-set can match it.
local function next_version(v)
  if not v then return '1' end
  local n = tonumber(v)
  if n and n >= 0 and n < MAX_MS and int(n) == v then return int(n + 1) end
  return NOW_S
end

-- Before a schedule script's first write: the KQ_DAMAGED_KEY reply when the event
-- stream, the schedule index, the due index or the schedule's hash `sk` holds another
-- type (check_keys, lib_base.lua), else nil.
local function schedule_damaged(sk)
  return check_keys(8) or check_key(K_SCHEDULES, 'zset') or check_key(K_SCHED_DUE, 'zset')
    or check_key(sk, 'hash')
end

local function schedules_changed(id)
  redis.call('PUBLISH', SCHED_CHANNEL, id)
end
