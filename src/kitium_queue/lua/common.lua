--[[
  common.lua — fragment included (via --@include common) at the top of every script.

  Shared KEYS layout (every script receives the same vector, built in keys.py):
    KEYS[1]  wait       ZSET  waiting jobs, score = priority band + sequence
    KEYS[2]  active     ZSET  leased jobs, score = lease deadline (ms)
    KEYS[3]  delayed    ZSET  delayed jobs, score = due time (ms)
    KEYS[4]  completed  ZSET  completed jobs, score = finish time (ms)
    KEYS[5]  failed     ZSET  terminally failed jobs (DLQ disabled), score = finish time
    KEYS[6]  dlq        ZSET  dead-lettered jobs, score = time of dead-lettering
    KEYS[7]  meta       HASH  queue-level flags (paused, ...)
    KEYS[8]  events     STREAM durable per-queue event log
    KEYS[9]  marker     ZSET  wake-up marker for idle workers (member "0")
    KEYS[10] id         STRING job id / sequence counter
    KEYS[11] limiter    STRING fixed-window counter of the queue rate limiter
    KEYS[12] lease      STRING lease token counter (fencing tokens)

  Shared ARGV prefix:
    ARGV[1]  key prefix of the queue, ending with ':' (e.g. "kq:{orders}:"); job hashes
             are <prefix>job:<id>, log lists <prefix>logs:<id>, idempotency keys
             <prefix>idem:<key>. They share the hash tag of KEYS, so scripts stay
             cluster-safe.
    ARGV[2]  now in ms; empty string = use the Redis server clock (production default,
             immune to client clock skew). Tests pass an explicit time: an integer from 0
             to MAX_MS; anything else is refused (KQ_BAD_ARGUMENT, before any write).
    ARGV[3]  approximate max length of the event stream, clamped to 0..MAX_MS (missing
             or not a number: 10000).

  Script-specific arguments start at ARGV[4].

  Rules every script keeps (Redis keeps the writes a script made before it failed, so a
  failure after the first write leaves a half-done transition behind):
    * numeric arguments are checked or clamped at the top (arg_int), before any write;
    * lists of arbitrary length never go to unpack() whole: zrem_all / zadd_all /
      flush_wait send at most 500 members (1000 arguments) per command;
    * every per-call amount of work is bounded (BATCH_MAX jobs), and the client calls
      again for more.
]]
local K_WAIT, K_ACTIVE, K_DELAYED = KEYS[1], KEYS[2], KEYS[3]
local K_COMPLETED, K_FAILED, K_DLQ = KEYS[4], KEYS[5], KEYS[6]
local K_META, K_EVENTS, K_MARKER = KEYS[7], KEYS[8], KEYS[9]
local K_ID, K_LIMITER, K_LEASE = KEYS[10], KEYS[11], KEYS[12]
local PREFIX = ARGV[1]

-- Largest time or duration in ms a script stores or computes with: 2^50 ms is about
-- 35,000 years, above any documented range, and NOW + MAX_MS is still an exact integer
-- in a double (so int() prints it as digits, never as "1e+17", which Redis refuses).
local MAX_MS = 1125899906842624
-- Most jobs one call moves, examines or deletes (promote, recover, drain, clear, retry,
-- replay, trim_finished), so no call blocks Redis for long; callers loop for more.
local BATCH_MAX = 1000

-- A numeric argument as an integer within lo..hi: `default` when it is missing or not a
-- number (nil, NaN); below lo (-inf too) gives lo, above hi (inf too) gives hi, and a
-- fraction is cut. Used on arguments before a script's first write, so a bad value can
-- never make a command fail half way through a transition.
local function arg_int(x, default, lo, hi)
  local n = tonumber(x)
  if n == nil or n ~= n then return default end
  if n <= lo then return lo end
  if n >= hi then return hi end
  return math.floor(n)
end

-- The error reply for a malformed argument, sent before the script's first write.
-- 'KQ_BAD_ARGUMENT' is the code finish.lua and extend.lua use for the same purpose.
local function bad_arg(script, detail)
  return redis.error_reply('KQ_BAD_ARGUMENT ' .. script .. ': ' .. detail ..
    '; nothing was written')
end

local EVENTS_MAXLEN = arg_int(ARGV[3], 10000, 0, MAX_MS)

local NOW
if ARGV[2] ~= nil and ARGV[2] ~= '' then
  NOW = tonumber(ARGV[2])
  -- An explicit clock that is not a usable time would surface later as a failed ZADD
  -- or a "nan" score, after writes: refuse it here, before any.
  if NOW == nil or NOW ~= NOW or NOW < 0 or NOW > MAX_MS then
    return bad_arg('now', 'ARGV[2] must be empty (server clock) or a time in ms from 0 '
      .. 'to ' .. string.format('%.0f', MAX_MS) .. ', got ' .. tostring(ARGV[2]))
  end
  NOW = math.floor(NOW)
else
  local t = redis.call('TIME')
  NOW = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Integers above 1e14 lose digits through Lua's default number formatting.
local function int(x)
  return string.format('%.0f', x)
end

local NOW_S = int(NOW)
-- As a string once per call: redis.call formats a number argument on every call.
local EVENTS_MAXLEN_S = int(EVENTS_MAXLEN)

-- A counter field (attempts, stalls, timestamps) as a number. A damaged value (not a
-- finite number) counts as 0: a corrupted record must not abort a script half way,
-- after some of its writes were made.
local function num(x)
  local n = tonumber(x)
  if n == nil or n ~= n or n == math.huge or n == -math.huge then return 0 end
  return n
end

local function job_key(id)
  return PREFIX .. 'job:' .. id
end

local function emit(event, id, ...)
  redis.call('XADD', K_EVENTS, 'MAXLEN', '~', EVENTS_MAXLEN_S, '*', 'e', event, 'id', id, ...)
end

local function wake()
  redis.call('ZADD', K_MARKER, 0, '0')
end

-- Priority 0..65535, higher runs first. Band of 2^36 per priority; FIFO jobs sit in the
-- upper half of the band ordered by sequence, LIFO jobs in the lower half in reverse.
-- Stored sequence q is negative for LIFO jobs. Max score ~2^52: exact in a double.
local BAND = 68719476736   -- 2^36
local HALF = 34359738368   -- 2^35
local function wait_score(pri, q)
  return (65535 - pri) * BAND + HALF + q
end

local function push_wait(jk, id)
  local f = redis.call('HMGET', jk, 'p', 'q')
  -- A damaged priority or sequence ("nan", "inf", garbage) must not become a score Redis
  -- refuses half way through a promote or recover: read it as the default instead.
  local pri = arg_int(f[1], 0, 0, 65535)
  redis.call('ZADD', K_WAIT, int(wait_score(pri, num(f[2]))), id)
  redis.call('HSET', jk, 'st', 'waiting')
end

local function push_delayed(jk, id, due)
  redis.call('ZADD', K_DELAYED, int(due), id)
  redis.call('HSET', jk, 'st', 'delayed', 'due', int(due))
  local first = redis.call('ZRANGE', K_DELAYED, 0, 0)
  if first[1] == id then wake() end
end

-- Most sequence numbers add_job takes while looking for a free auto id (see below).
local AUTO_ID_TRIES = 1000

-- Create job <id> ('' = an auto id: its sequence number) in wait, or in delayed when
-- delay > 0 ms, and write its job-added event. Returns id, job key, state ('waiting' |
-- 'delayed'); or nil and a reason when no free auto id was found, in which case nothing
-- of the job was written (only the sequence counter moved). Callers that pass a chosen
-- id never get nil: they check themselves whether that id exists (a chosen id is never
-- replaced either).
-- priority is clamped to 0..65535 and delay to 0..MAX_MS (a missing or NaN value counts
-- as 0), so no score or PX argument can be refused after the job's first write.
-- The caller wakes idle workers (wake()) once per call when a job went to wait. With
-- `batch` (a table), the ZADD to wait is left to the caller as score/id pairs, so a bulk
-- enqueue adds its waiting jobs in one command per 500 (flush_wait). Used by enqueue.lua
-- and by scripts that add jobs atomically with their own state change (schedule_fire.lua).
local function add_job(id, name, data, opts, pri, delay, lifo, batch)
  pri = arg_int(pri, 0, 0, 65535)
  delay = arg_int(delay, 0, 0, MAX_MS)
  local seq = redis.call('INCR', K_ID)
  if id == '' then
    -- Auto ids are sequence numbers, and a job hash may already sit at the next one: a
    -- numeric job_id chosen by an older version or another client, or a counter that was
    -- reset. Overwriting it would silently replace another job, so skip taken numbers.
    -- Bounded: after AUTO_ID_TRIES taken numbers in a row, give up for this job.
    local tries = 1
    while redis.call('EXISTS', job_key(int(seq))) == 1 do
      if tries >= AUTO_ID_TRIES then
        return nil, 'no free auto id: job ids ' .. int(seq - tries + 1) .. ' to ' ..
          int(seq) .. ' are all taken by existing jobs (numeric job ids chosen outside ' ..
          'the sequence?); the job was not added, and adding it again continues after ' ..
          'them'
      end
      seq = redis.call('INCR', K_ID)
      tries = tries + 1
    end
    -- int(), not tostring(): tostring prints 1e14 and above in exponent form, so two
    -- different sequence numbers could map to one id.
    id = int(seq)
  end
  local q = seq
  if lifo == '1' then q = -seq end
  local jk = job_key(id)
  local state = 'waiting'
  if delay > 0 then state = 'delayed' end
  if opts ~= '' then
    redis.call('HSET', jk, 'n', name, 'd', data, 'ts', NOW_S, 'p', pri, 'q', int(q), 'a', 0,
      's', 0, 'st', state, 'o', opts)
  else
    redis.call('HSET', jk, 'n', name, 'd', data, 'ts', NOW_S, 'p', pri, 'q', int(q), 'a', 0,
      's', 0, 'st', state)
  end
  if delay > 0 then
    push_delayed(jk, id, NOW + delay)
  elseif batch then
    batch[#batch + 1] = int(wait_score(pri, q))
    batch[#batch + 1] = id
  else
    redis.call('ZADD', K_WAIT, int(wait_score(pri, q)), id)
  end
  emit('job-added', id, 'name', name, 'st', state)
  return id, jk, state
end

-- Set updates of a whole call, one command per 500 members (bounded argument count).
-- Never unpack() a list of arbitrary length: Lua's C stack takes about 8000 values, and a
-- failure there comes after the writes made for the list's members.
local function zrem_all(key, ids)
  for i = 1, #ids, 500 do
    redis.call('ZREM', key, unpack(ids, i, math.min(i + 499, #ids)))
  end
end

local function zadd_all(key, score, ids)
  for i = 1, #ids, 500 do
    local za = {}
    for j = i, math.min(i + 499, #ids) do
      za[#za + 1] = score
      za[#za + 1] = ids[j]
    end
    redis.call('ZADD', key, unpack(za))
  end
end

local function flush_wait(batch)
  for i = 1, #batch, 1000 do
    redis.call('ZADD', K_WAIT, unpack(batch, i, math.min(i + 999, #batch)))
  end
end

-- Remove all records of a job (hash, log list). The caller removes it from its set.
local function delete_job(id)
  -- An idempotency key outlives its job on purpose: it suppresses duplicates for its
  -- whole window even after the job was removed.
  redis.call('DEL', job_key(id), PREFIX .. 'logs:' .. id)
end

-- Bounded retention of a finished-jobs set: keep at most keep_count (-1 = no limit)
-- and nothing older than keep_age ms (-1 = no limit). Removes at most BATCH_MAX per
-- call, more than one finish call adds (500), so the set cannot outgrow its limit.
-- A negative, missing or NaN limit means no limit; a huge one is clamped to MAX_MS.
local function trim_finished(set_key, keep_count, keep_age)
  keep_count = arg_int(keep_count, -1, -1, MAX_MS)
  keep_age = arg_int(keep_age, -1, -1, MAX_MS)
  if keep_count >= 0 then
    local excess = redis.call('ZCARD', set_key) - keep_count
    if excess > 0 then
      if excess > BATCH_MAX then excess = BATCH_MAX end
      local old = redis.call('ZRANGE', set_key, 0, excess - 1)
      for i = 1, #old do delete_job(old[i]) end
      zrem_all(set_key, old)
    end
  end
  if keep_age >= 0 then
    local old = redis.call('ZRANGEBYSCORE', set_key, '-inf', int(NOW - keep_age), 'LIMIT', 0,
      BATCH_MAX)
    for i = 1, #old do delete_job(old[i]) end
    zrem_all(set_key, old)
  end
end

-- Terminal failure: to the DLQ when enabled, else to the failed set.
-- Reasons copied into the event stream are cut to this many bytes: the job record keeps
-- the whole text, and the stream (10,000 entries by default) stays small in bytes too.
local STREAM_REASON_BYTES = 512
local function stream_reason(reason)
  if #reason <= STREAM_REASON_BYTES then return reason end
  return string.sub(reason, 1, STREAM_REASON_BYTES) .. '...'
end

-- 'hash' for a sound job record, 'none' when it is gone, anything else when the key was
-- overwritten with another type (damaged by hand): such a key must not make a script
-- fail half way, so callers treat it like a missing record.
local function key_type(jk)
  return redis.call('TYPE', jk)['ok']
end

local function dead_letter(jk, id, dlq_enabled, reason, tb, damaged)
  local target, state = K_FAILED, 'failed'
  if dlq_enabled then target, state = K_DLQ, 'dlq' end
  if not damaged then
    redis.call('HSET', jk, 'st', state, 'f', int(NOW), 'e', reason, 'tb', tb or '')
    redis.call('HDEL', jk, 'lt')
  end
  redis.call('ZADD', target, int(NOW), id)
  local short = stream_reason(reason)
  emit('job-failed', id, 'reason', short, 'final', '1')
  if dlq_enabled then emit('job-dlq', id, 'reason', short) end
  return state
end

-- Move due delayed jobs to wait, at most `limit` (clamped to 0..BATCH_MAX; missing or
-- NaN: BATCH_MAX) per call. A job whose hash was deleted meanwhile is dead-lettered as a
-- record of it (dlq_enabled: nil counts as enabled). Returns how many moved.
local function promote(limit, dlq_enabled)
  limit = arg_int(limit, BATCH_MAX, 0, BATCH_MAX)
  -- LIMIT 0 0 would still be a query; a count of 0 asks for nothing.
  if limit == 0 then return 0 end
  local due = redis.call('ZRANGEBYSCORE', K_DELAYED, '-inf', int(NOW), 'LIMIT', 0, limit)
  for i = 1, #due do
    local id = due[i]
    local jk = job_key(id)
    local kt = key_type(jk)
    if kt == 'hash' then
      push_wait(jk, id)
      redis.call('HDEL', jk, 'due')
    elseif kt == 'none' then
      dead_letter(jk, id, dlq_enabled ~= false,
        'job record missing: its hash key was deleted while the job was delayed', '')
    else
      dead_letter(jk, id, dlq_enabled ~= false,
        'job record damaged: its key holds a ' .. kt .. ', not a hash', '', true)
    end
  end
  zrem_all(K_DELAYED, due)
  return #due
end

-- Requeue jobs whose lease expired, examining at most `limit` (clamped to
-- 0..BATCH_MAX; missing or NaN: BATCH_MAX) per call. A job that has stalled more than
-- max_stalled times (clamped to 0..MAX_MS; missing or NaN: 2) is dead-lettered, and so
-- is one cancel_job() had flagged. The stalled run does not count as an attempt.
-- Returns {recovered ids}, {dead-lettered ids}: every examined job is in one of them.
local function recover(limit, max_stalled, dlq_enabled)
  limit = arg_int(limit, BATCH_MAX, 0, BATCH_MAX)
  max_stalled = arg_int(max_stalled, 2, 0, MAX_MS)
  if limit == 0 then return {}, {} end
  local expired = redis.call('ZRANGEBYSCORE', K_ACTIVE, '-inf', int(NOW), 'LIMIT', 0, limit)
  local back, dead = {}, {}
  for i = 1, #expired do
    local id = expired[i]
    local jk = job_key(id)
    redis.call('ZREM', K_ACTIVE, id)
    local kt = key_type(jk)
    if kt == 'none' then
      -- The hash was deleted while the job ran: dead-letter a record of it rather than
      -- drop the job silently.
      dead_letter(jk, id, dlq_enabled,
        'job record missing: its hash key was deleted while the job was running', '')
      dead[#dead + 1] = id
    elseif kt ~= 'hash' then
      dead_letter(jk, id, dlq_enabled,
        'job record damaged: its key holds a ' .. kt .. ', not a hash', '', true)
      dead[#dead + 1] = id
    else
      local c = redis.call('HMGET', jk, 's', 'a')
      local stalls = num(c[1]) + 1
      redis.call('HSET', jk, 's', int(stalls), 'a', int(math.max(num(c[2]) - 1, 0)))
      redis.call('HDEL', jk, 'lt')
      if stalls > max_stalled then
        dead_letter(jk, id, dlq_enabled,
          'job stalled ' .. stalls .. ' times (max_stalled_count=' .. max_stalled ..
          '): its worker died or stopped renewing the lease each time', '')
        dead[#dead + 1] = id
      elseif redis.call('HEXISTS', jk, 'cx') == 1 then
        -- cancel_job() flagged it, then its worker vanished before it could stop it:
        -- finish the cancellation here instead of running the job again.
        redis.call('HDEL', jk, 'cx')
        dead_letter(jk, id, dlq_enabled,
          'cancelled by cancel_job() (its worker stopped before it could stop the job)', '')
        dead[#dead + 1] = id
      else
        push_wait(jk, id)
        emit('job-stalled', id, 'stalls', stalls)
        back[#back + 1] = id
      end
    end
  end
  if #back > 0 then wake() end
  return back, dead
end

local FINISHED_SETS = { failed = K_FAILED, dlq = K_DLQ, completed = K_COMPLETED }

-- Put a finished job back to wait as a fresh job: attempts and stalls reset, last
-- error kept in 'le' for the record. Used by retry.lua and replay.lua.
local function requeue(id, set_key)
  local jk = job_key(id)
  redis.call('ZREM', set_key, id)
  local err = redis.call('HGET', jk, 'e')
  if err then redis.call('HSET', jk, 'le', err) end
  redis.call('HSET', jk, 'a', 0, 's', 0)
  redis.call('HDEL', jk, 'e', 'tb', 'f', 'r', 'lt', 'due', 'cx', 'pg')
  push_wait(jk, id)
  emit('job-waiting', id, 'from', 'retry')
end
