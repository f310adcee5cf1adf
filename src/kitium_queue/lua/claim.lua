--[[
  claim.lua — hand out up to N jobs (waiting → active) under a lease.

  Before claiming it promotes due delayed jobs and recovers expired leases (both bounded),
  so a worker that calls claim needs no other loop to make progress.

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]  N: max jobs to claim (the worker's free slots)
  ARGV[5]  lease duration ms
  ARGV[6]  limiter max jobs per window (0 = no limiter)
  ARGV[7]  limiter window ms
  ARGV[8]  max_stalled_count
  ARGV[9]  dlq enabled ('1' | '0')
  ARGV[10] worker id (stored on the job for operators)
  ARGV[11] scan limit: max waiting jobs examined per call (admission checks may skip some)

  Returns:
    { status, wake_in, token, {recovered ids}, {dead-lettered ids}, job1..., jobN }
    status  'ok' | 'paused' | 'limited' | 'empty' | 'fenced'
    wake_in ms until something becomes due (earliest delayed job, earliest lease
            deadline, limiter window end), or -1 if nothing is scheduled. Relative, so
            the worker needs no clock agreement with Redis. A claim that handed out
            every job asked for answers -1 without looking (two reads saved per call):
            its worker claims again as soon as a slot frees.
    token   the fencing token of this claim (same for every job of this call)
    job     { id, name, data, opts, attempts (incl. this one), created ts, stalls, progress, follows }
            follows: the job's 'fw' field (the run contexts of the runs it follows,
            written by features' Lua: run links), nil when absent
  Events: job-started per claimed job; job-stalled / job-failed / job-dlq from recovery.
  Admission: when features filled the `admission` slot, every candidate passes
  admit(id, jk, opts, f) (admission.lua, composed at load time from their checks) before
  it is handed out; a rejected candidate stays in wait, untouched, unless its check parks
  it (admit_park: out of wait, behind its blocker; lib_parking.lua), and its checks may
  shorten wake_in; work they defer with admit_after runs once the candidates are handed
  out and out of wait. With no check registered, nothing is called per candidate.
  Parked jobs: when any slot is filled, due park timers are served after recovery
  (bounded, lib_park_timers.lua fire_timers) and wake_in covers the earliest timer. A
  parking key of another type (damaged) fails nothing: it is skipped and recorded in
  slot-errors (lib_parking.lua), and a job its check cannot park stays in wait.
  Fence: when a feature filled the `fence` slot and it refuses (kitium_queue.slots), the
  reply is { 'fenced', 1000, 0, {}, {} } and nothing was written: no job is promoted,
  recovered or handed out.
  Damaged keys: when a key of the layout it uses holds another type, or the lease (or,
  with a limiter, the limiter) counter holds something that is not an integer, the
  reply is the error KQ_DAMAGED_KEY <found> <expected> <key> and nothing was written.
  Hold: while <prefix>hold exists (a processor raised RateLimited), nothing is handed
  out and the status is 'limited' until it expires.
]]
--@include lib_base
--@include lib_events
--@include lib_sets
--@include lib_retention
--@include lib_promote
--@include lib_recover
--@include admission
--@if parking
--@include lib_park_timers
--@end
--@include slot_fence

local want = tonumber(ARGV[4])
local lease = tonumber(ARGV[5])
local lim_max, lim_win = tonumber(ARGV[6]), tonumber(ARGV[7])
local max_stalled = tonumber(ARGV[8])
local dlq_enabled = ARGV[9] == '1'
local worker = ARGV[10]
local scan = tonumber(ARGV[11])

--@if fence
local fenced = fence_slot('claim')
if fenced then return { 'fenced', 1000, 0, {}, {} } end
--@end
-- The keys written after the first write (lib_base.lua check_keys): six commands a call.
-- delayed needs none: promote reads it before anything is written.
local dlq_key = 6
if not dlq_enabled then dlq_key = 5 end
local damaged = keep_running_when_full() or check_keys(1, 2, dlq_key, 8, 9, 12)
if not damaged and lim_max > 0 then damaged = check_keys(11) end
if damaged then return damaged end
promote(1000, dlq_enabled)
local back, dead = recover(1000, max_stalled, dlq_enabled)
--@if parking
fire_timers()
--@end

local function wake_at(extra)
  local t = -1
  local d = redis.call('ZRANGE', K_DELAYED, 0, 0, 'WITHSCORES')
  if d[2] then t = tonumber(d[2]) end
  local a = redis.call('ZRANGE', K_ACTIVE, 0, 0, 'WITHSCORES')
  if a[2] and (t < 0 or tonumber(a[2]) < t) then t = tonumber(a[2]) end
  if extra and (t < 0 or extra < t) then t = extra end
--@if parking
  local pt = next_timer()
  if pt and (t < 0 or pt < t) then t = pt end
--@end
  if t < 0 then return -1 end
  if t < NOW then return 0 end
  return t - NOW
end

if redis.call('HGET', K_META, 'paused') == '1' then
  return { 'paused', wake_at(nil), 0, back, dead }
end

local held = redis.call('PTTL', PREFIX .. 'hold')
if held > 0 then
  return { 'limited', wake_at(NOW + held), 0, back, dead }
end

if lim_max > 0 then
  local used = tonumber(redis.call('GET', K_LIMITER) or '0')
  local left = lim_max - used
  if left <= 0 then
    local ttl = redis.call('PTTL', K_LIMITER)
    -- A window longer than lim_win: the server clock was set back (an expiry is kept
    -- in wall-clock time), which held the whole queue for as long as the step. A new
    -- window starts.
    if ttl < 0 or ttl > lim_win then
      redis.call('DEL', K_LIMITER)
      left = lim_max
    else
      return { 'limited', wake_at(NOW + ttl), 0, back, dead }
    end
  end
  if left < want then want = left end
end

local out = { 'ok', -1, 0, back, dead }
local token, token_s = 0, '0'
local got = 0
local taken, leased = {}, {}
if want > 0 then
  -- Examine candidates in rank order, fetching only as many as still wanted; rejected
  -- candidates stay in place, so the next fetch starts after everything examined.
  local examined = 0
  while got < want and examined < scan and not ADMIT_STOP do
    local batch = math.min(want - got, scan - examined)
--@if admission
    local cands = redis.call('ZRANGE', K_WAIT, examined, examined + batch - 1)
--@else
    -- No admission check can refuse a candidate, so every one fetched is taken (leased
    -- or dead-lettered): pop them, one command where reading them and then removing
    -- them by name took two.
    local popped = redis.call('ZPOPMIN', K_WAIT, batch)
    local cands = {}
    for i = 1, #popped, 2 do cands[#cands + 1] = popped[i] end
--@end
    if #cands == 0 then break end
    examined = examined + #cands
    for i = 1, #cands do
      if ADMIT_STOP then break end
      local id = cands[i]
      local jk = job_key(id)
      -- pcall: a job key overwritten with another type must not fail every claim.
      -- Fields the admission checks declared (ScriptRegistry.add_slot(fields=)) are
      -- read in the same HMGET, after these eight.
      local f = redis.pcall('HMGET', jk, 'n', 'd', 'o', 'ts', 's', 'pg', 'a', 'fw'--[[@admission_fields]])
      if f.err then
        taken[#taken + 1] = id
        -- Features give back what the job held (a group's turn) as for any failure.
        --@slot release(id, jk, 'failed')
        dead_letter(jk, id, dlq_enabled,
          'job record damaged: its key holds a ' .. key_type(jk) .. ', not a hash', '', true)
        dead[#dead + 1] = id
      elseif not f[1] then
        -- The job's hash was deleted behind our back: dead-letter a record of it rather
        -- than lose it silently.
        taken[#taken + 1] = id
        count_missing()
        --@slot release(id, jk, 'failed')
        dead_letter(jk, id, dlq_enabled,
          'job record missing: its hash key was deleted while the job was waiting', '')
        dead[#dead + 1] = id
--@if admission
      elseif not admit(id, jk, f[3], f) then
        if ADMIT_PARK then
          -- Parked behind its blocker (out of wait, with its wait score): it comes back
          -- when the blocker is removed, and no later claim examines it meanwhile.
          local score = redis.call('ZSCORE', K_WAIT, id)
          if score then
            if ADMIT_PARK_SCORE then score = int(ADMIT_PARK_SCORE) end
            -- A damaged blocker set parks nothing (recorded): the job stays in wait.
            if park(id, jk, score, ADMIT_PARK) then taken[#taken + 1] = id end
          end
        end
--@end
      else
        if token == 0 then
          -- Lease tokens follow the clock: the token is the time in units of 10 µs,
          -- or the last token + 1 when that is not above it (claims within one tick,
          -- a clock set back). So a token is above every token issued before, even
          -- when Redis lost its latest writes and the counter went back with them
          -- (a failover to a replica that missed them, a restart from an older
          -- snapshot, FLUSHALL) while workers still hold jobs under the lost tokens,
          -- and auto ids went back too: an old outcome never matches a new job that
          -- took the same id. One command, as the INCR was: 15 digits, what
          -- check_keys takes for a counter, until the year 2286.
          local prev = tonumber(redis.call('SET', K_LEASE, int(CLOCK_10US), 'GET')) or 0
          if prev >= CLOCK_10US then
            token = prev + 1
            redis.call('SET', K_LEASE, int(token))
          else
            token = CLOCK_10US
          end
          token_s = int(token)
        end
        local att = num(f[7]) + 1
        local att_s = int(att)
        redis.call('HSET', jk, 'st', 'active', 'lt', token_s, 'ps', NOW_S, 'w', worker, 'a', att_s)
        out[#out + 1] = { id, f[1], f[2] or '', f[3] or '', att, int(num(f[4])), int(num(f[5])), f[6] or '', f[8] }
        emit('job-started', id, 'att', att_s)
        taken[#taken + 1] = id
        leased[#leased + 1] = id
        got = got + 1
      end
    end
  end
--@if admission
  zrem_all(K_WAIT, taken)
--@end
  zadd_all(K_ACTIVE, int(NOW + lease), leased)
--@if admission
  -- What the checks deferred until wait is no longer scanned (admit_after).
  run_admit_after()
--@end
end

if lim_max > 0 and got > 0 then
  if redis.call('INCRBY', K_LIMITER, got) == got then
    redis.call('PEXPIRE', K_LIMITER, lim_win)
  end
end
out[3] = token
if got == 0 then
  out[1] = 'empty'
elseif redis.call('ZCARD', K_WAIT) > 0 then
  -- More work is waiting: pass the wake-up on to the next idle worker.
  wake()
end
if got == 0 or got < want then
  out[2] = wake_at(ADMIT_RETRY_AT)
end
return out
