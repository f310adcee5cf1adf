--[[
  schedule_fire.lua — claim the due ticks of one schedule and enqueue their jobs, in one
  atomic step (compare-and-set on the schedule's next tick).

  Every scheduler may call this for the same tick; only the call whose expected tick and
  version still match does anything, so each tick is enqueued once however many
  schedulers race, and a scheduler that dies before or after this call loses nothing.
  The ticks to enqueue (misfire policy, jitter) and the next tick are computed by the
  caller from the schedule's definition.

  Job ids are deterministic: sched:<schedule id>:<tick ms>. A tick whose job id exists
  is not enqueued again.

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]  schedule id
  ARGV[5]  expected next tick (the 'due' the caller read)
  ARGV[6]  expected version
  ARGV[7]  new next tick ('' = the schedule is finished), else a time in ms (0..MAX_MS)
  ARGV[8]  overlap: '1' = skip a tick while the previous job of the schedule is
           waiting, delayed, pending or active; '0' = allow
  ARGV[9..] pairs: tick ms, start time ms (tick + jitter; the job is delayed until then),
           at most 1000 pairs (MAX_TICKS_PER_FIRE in scheduler.py); each a time in ms
           (0..MAX_MS). A start before now enqueues at once.
  Malformed arguments (odd pair count, more than 1000 ticks, a tick, start or next tick
  that is not a time) are refused with KQ_BAD_ARGUMENT before anything is written.

  Damaged keys: when wait, delayed, the event stream, the marker, the due index or the
  schedule's key holds another type, or the id counter something that is not an integer,
  the reply is KQ_DAMAGED_KEY <found> <expected> <key> and nothing was written.
  Fence: when a feature filled the `fence` slot and it refuses (kitium_queue.slots), the
  call answers KQ_FENCED <reason> before anything is written.
  Returns { 'ok' | 'stale', {enqueued job ids}, skipped, next tick or '', refused,
            reason }
    'stale': another scheduler already handled this tick, or the schedule changed,
             was paused or removed; nothing was written.
    skipped: ticks not enqueued, by the overlap policy or refused by a feature;
    refused: those of them a feature refused (a full group, a quota), the last one's
             reason in `reason` ('' when none). A refused tick is not retried.
  Events: job-added per job; schedule-fired (id = schedule id, job, tick);
          schedule-skipped (overlap); schedule-finished.
]]
--@include lib_events
--@include lib_add
--@include schedule_keys
--@include slot_fence

local id, expect_due, expect_v = ARGV[4], ARGV[5], ARGV[6]
local nxt, skip_overlap = ARGV[7], ARGV[8] == '1'

-- Checked before the first write: a tick or start that is not a time would otherwise
-- fail inside the loop below, after earlier ticks' jobs were written and before the
-- schedule's next tick moved on, so the same ticks would be enqueued again.
local function is_time(x)
  local n = tonumber(x)
  return n ~= nil and n == n and n >= 0 and n <= MAX_MS
end
local pairs_n = (#ARGV - 8) / 2
if #ARGV < 8 or (#ARGV - 8) % 2 ~= 0 or pairs_n > 1000 then
  return bad_arg('schedule_fire', 'expected at most 1000 (tick, start) pairs after '
    .. 'ARGV[8], got ' .. (#ARGV - 8) .. ' values')
end
if nxt ~= '' and not is_time(nxt) then
  return bad_arg('schedule_fire', 'next tick must be empty or a time in ms, got ' ..
    tostring(nxt))
end
for b = 9, #ARGV, 2 do
  if not (is_time(ARGV[b]) and is_time(ARGV[b + 1])) then
    return bad_arg('schedule_fire', 'tick and start must be times in ms, got ' ..
      tostring(ARGV[b]) .. ', ' .. tostring(ARGV[b + 1]))
  end
end
--@if fence
local fenced = fence_slot('fire')
if fenced then return redis.error_reply('KQ_FENCED ' .. fenced) end
--@end
local sk = schedule_key(id)
local f = redis.call('HMGET', sk, 'due', 'v', 'paused', 'n', 'd', 'o', 'p', 'l', 'cnt', 'lim', 'lj')
if f[1] ~= expect_due or f[2] ~= expect_v or f[3] == '1' then
  return { 'stale', {}, 0, f[1] or '', 0, '' }
end
-- The keys the ticks write (check_keys, lib_base.lua), before the first write: wait,
-- delayed, the event stream, the marker, the id counter, the due index.
local damaged = check_keys(1, 3, 8, 9, 10) or check_key(K_SCHED_DUE, 'zset')
if damaged then return damaged end
-- lifo: its first character ('1n' / '0n', stored by a release before schedule_put kept
-- '1' | '0' only, is lifo / not lifo).
local name, data, opts, pri = f[4], f[5], f[6] or '', tonumber(f[7]) or 0
local lifo = string.sub(f[8] or '0', 1, 1)
-- num(): a damaged counter reads as 0 instead of comparing as NaN.
local cnt, lim, last_job = num(f[9]), num(f[10]), f[11]
local RUNNING = { waiting = true, delayed = true, active = true, pending = true }

local fired, skipped, last_tick, woke = {}, 0, nil, false
local refused, refused_why = 0, ''
for b = 9, #ARGV, 2 do
  if lim > 0 and cnt >= lim then break end
  local tick, start = ARGV[b], tonumber(ARGV[b + 1])
  local busy = false
  if skip_overlap and last_job then
    busy = RUNNING[redis.call('HGET', job_key(last_job), 'st') or ''] == true
  end
  if busy then
    skipped = skipped + 1
    emit('schedule-skipped', id, 'tick', tick, 'running', last_job)
  else
    local jid = 'sched:' .. id .. ':' .. tick
    if redis.call('EXISTS', job_key(jid)) == 0 then
      local added, why, state = add_job(jid, name, data, opts, pri, start - NOW, lifo)
      if not added then
        -- Refused by a feature (a full group, a quota): this run is skipped, said why.
        skipped = skipped + 1
        refused, refused_why = refused + 1, tostring(why)
        emit('schedule-refused', id, 'tick', tick, 'reason', refused_why)
      else
        if state == 'waiting' then woke = true end
        cnt = cnt + 1
        fired[#fired + 1] = jid
        last_job, last_tick = jid, tick
        emit('schedule-fired', id, 'job', jid, 'tick', tick)
      end
    end
  end
end

if lim > 0 and cnt >= lim then nxt = '' end
redis.call('HSET', sk, 'due', nxt, 'cnt', int(cnt))
if skipped > 0 then
  -- Not HINCRBY: it fails on a damaged (non-integer) field, after the jobs were written.
  redis.call('HSET', sk, 'skip', int(num(redis.call('HGET', sk, 'skip')) + skipped))
end
if last_tick then redis.call('HSET', sk, 'last', last_tick, 'lj', last_job) end
if nxt == '' then
  redis.call('HSET', sk, 'done', '1')
  redis.call('ZREM', K_SCHED_DUE, id)
  emit('schedule-finished', id, 'runs', cnt)
else
  redis.call('ZADD', K_SCHED_DUE, nxt, id)
end
if woke then wake() end
return { 'ok', fired, skipped, nxt, refused, refused_why }
