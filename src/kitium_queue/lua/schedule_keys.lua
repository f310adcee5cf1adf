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
]]
--@include lib_base

local K_SCHEDULES = PREFIX .. 'schedules'
local K_SCHED_DUE = PREFIX .. 'schedules:due'
local SCHED_CHANNEL = PREFIX .. 'schedules:changed'

local function schedule_key(id)
  return PREFIX .. 'schedule:' .. id
end

local function schedules_changed(id)
  redis.call('PUBLISH', SCHED_CHANNEL, id)
end
