--[[
  schedule_put.lua — create or update a schedule (upsert by id).

  Re-declaring a schedule with an identical definition changes nothing (no version bump),
  so every process may declare its schedules at start-up. A changed timing (pattern,
  interval, time zone, start date) moves the next tick to ARGV[13]; any other change
  keeps the next tick. Runtime state (runs, last tick, paused) survives updates.

  KEYS: the shared layout (lib_base.lua); uses events.
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]  schedule id
  ARGV[5]  definition JSON
  ARGV[6]  timing signature
  ARGV[7]  job name
  ARGV[8]  encoded job data
  ARGV[9]  job options JSON ('' = none)
  ARGV[10] priority
  ARGV[11] lifo ('1' | '0')
  ARGV[12] run limit (0 = none)
  ARGV[13] next tick computed by the caller from now ('' = never fires)
  ARGV[14] end date ms (0 = none): a kept next tick after it finishes the schedule

  Returns { 'created' | 'updated' | 'unchanged', next tick ms or '' }; 'updated' adds the
  definition it replaced and '1' | '0' (the job data changed), for the caller's log line
  that names what changed (never the data).
  Events: schedule-created | schedule-updated (id = schedule id).
  Damaged keys: KQ_DAMAGED_KEY <found> <expected> <key> when the event stream, a schedule
  index or the schedule's key holds another type (nothing written); a version that is
  not an integer is replaced (next_version, schedule_keys.lua).
]]
--@include lib_events
--@include schedule_keys

local id, def, sig = ARGV[4], ARGV[5], ARGV[6]
local lim, first, end_ms = tonumber(ARGV[12]), ARGV[13], tonumber(ARGV[14])
local sk = schedule_key(id)
local damaged = schedule_damaged(sk)
if damaged then return damaged end
local f = redis.call('HMGET', sk, 'def', 'd', 'sig', 'due', 'cnt', 'paused', 'v')
local is_new = not f[7]
if not is_new and f[1] == def and f[2] == ARGV[8] then
  return { 'unchanged', f[4] or '' }
end

local due = first
if not is_new and f[3] == sig and f[4] and f[4] ~= '' then due = f[4] end
local cnt = tonumber(f[5]) or 0
if due ~= '' and ((lim > 0 and cnt >= lim) or (end_ms > 0 and tonumber(due) > end_ms)) then
  due = ''
end

redis.call('HSET', sk, 'def', def, 'sig', sig, 'n', ARGV[7], 'd', ARGV[8], 'o', ARGV[9],
  'p', ARGV[10], 'l', ARGV[11], 'lim', lim, 'due', due, 'ua', NOW_S)
redis.call('HSET', sk, 'v', next_version(f[7]))
if is_new then
  redis.call('HSET', sk, 'cnt', 0, 'skip', 0, 'ca', NOW_S)
  redis.call('ZADD', K_SCHEDULES, NOW_S, id)
end
if due == '' then
  redis.call('HSET', sk, 'done', '1')
  redis.call('ZREM', K_SCHED_DUE, id)
else
  redis.call('HDEL', sk, 'done')
  if f[6] == '1' then
    redis.call('ZREM', K_SCHED_DUE, id)
  else
    redis.call('ZADD', K_SCHED_DUE, due, id)
  end
end
if is_new then
  emit('schedule-created', id, 'next', due)
  schedules_changed(id)
  return { 'created', due }
end
emit('schedule-updated', id, 'next', due)
schedules_changed(id)
return { 'updated', due, f[1] or '', f[2] == ARGV[8] and '0' or '1' }
