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
             immune to client clock skew). Tests pass an explicit time.
    ARGV[3]  approximate max length of the event stream.

  Script-specific arguments start at ARGV[4].
]]
local K_WAIT, K_ACTIVE, K_DELAYED = KEYS[1], KEYS[2], KEYS[3]
local K_COMPLETED, K_FAILED, K_DLQ = KEYS[4], KEYS[5], KEYS[6]
local K_META, K_EVENTS, K_MARKER = KEYS[7], KEYS[8], KEYS[9]
local K_ID, K_LIMITER, K_LEASE = KEYS[10], KEYS[11], KEYS[12]
local PREFIX = ARGV[1]
local EVENTS_MAXLEN = tonumber(ARGV[3]) or 10000

local NOW
if ARGV[2] ~= nil and ARGV[2] ~= '' then
  NOW = tonumber(ARGV[2])
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
  redis.call('ZADD', K_WAIT, int(wait_score(tonumber(f[1]) or 0, tonumber(f[2]) or 0)), id)
  redis.call('HSET', jk, 'st', 'waiting')
end

local function push_delayed(jk, id, due)
  redis.call('ZADD', K_DELAYED, int(due), id)
  redis.call('HSET', jk, 'st', 'delayed', 'due', int(due))
  local first = redis.call('ZRANGE', K_DELAYED, 0, 0)
  if first[1] == id then wake() end
end

-- Create job <id> ('' = its sequence number) in wait, or in delayed when delay > 0 ms,
-- and write its job-added event. Returns id, job key, state ('waiting' | 'delayed').
-- The caller wakes idle workers (wake()) once per call when a job went to wait. With
-- `batch` (a table), the ZADD to wait is left to the caller as score/id pairs, so a bulk
-- enqueue adds its waiting jobs in one command per 500 (flush_wait). Used by enqueue.lua
-- and by scripts that add jobs atomically with their own state change (schedule_fire.lua).
local function add_job(id, name, data, opts, pri, delay, lifo, batch)
  local seq = redis.call('INCR', K_ID)
  if id == '' then id = tostring(seq) end
  local q = seq
  if lifo == '1' then q = -seq end
  local jk = job_key(id)
  local state = 'waiting'
  if delay > 0 then state = 'delayed' end
  if opts ~= '' then
    redis.call('HSET', jk, 'n', name, 'd', data, 'ts', NOW_S, 'p', pri, 'q', q, 'a', 0, 's', 0,
      'st', state, 'o', opts)
  else
    redis.call('HSET', jk, 'n', name, 'd', data, 'ts', NOW_S, 'p', pri, 'q', q, 'a', 0, 's', 0,
      'st', state)
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
-- and nothing older than keep_age ms (-1 = no limit). Removes at most 1000 per call,
-- more than one finish call adds (500), so the set cannot outgrow its limit.
local function trim_finished(set_key, keep_count, keep_age)
  if keep_count >= 0 then
    local excess = redis.call('ZCARD', set_key) - keep_count
    if excess > 0 then
      if excess > 1000 then excess = 1000 end
      local old = redis.call('ZRANGE', set_key, 0, excess - 1)
      for i = 1, #old do delete_job(old[i]) end
      redis.call('ZREM', set_key, unpack(old))
    end
  end
  if keep_age >= 0 then
    local old = redis.call('ZRANGEBYSCORE', set_key, '-inf', int(NOW - keep_age), 'LIMIT', 0, 1000)
    if #old > 0 then
      for i = 1, #old do delete_job(old[i]) end
      redis.call('ZREM', set_key, unpack(old))
    end
  end
end

-- Terminal failure: to the DLQ when enabled, else to the failed set.
local function dead_letter(jk, id, dlq_enabled, reason, tb)
  local target, state = K_FAILED, 'failed'
  if dlq_enabled then target, state = K_DLQ, 'dlq' end
  redis.call('HSET', jk, 'st', state, 'f', int(NOW), 'e', reason, 'tb', tb or '')
  redis.call('HDEL', jk, 'lt')
  redis.call('ZADD', target, int(NOW), id)
  emit('job-failed', id, 'reason', reason, 'final', '1')
  if dlq_enabled then emit('job-dlq', id, 'reason', reason) end
  return state
end

-- Move due delayed jobs to wait (bounded). A job whose hash was deleted meanwhile is
-- dead-lettered as a record of it (dlq_enabled: nil counts as enabled).
local function promote(limit, dlq_enabled)
  local due = redis.call('ZRANGEBYSCORE', K_DELAYED, '-inf', int(NOW), 'LIMIT', 0, limit)
  for i = 1, #due do
    local id = due[i]
    local jk = job_key(id)
    if redis.call('EXISTS', jk) == 1 then
      push_wait(jk, id)
      redis.call('HDEL', jk, 'due')
    else
      dead_letter(jk, id, dlq_enabled ~= false,
        'job record missing: its hash key was deleted while the job was delayed', '')
    end
  end
  if #due > 0 then redis.call('ZREM', K_DELAYED, unpack(due)) end
  return #due
end

-- Requeue jobs whose lease expired (bounded). A job that has stalled more than
-- max_stalled times is dead-lettered, and so is one cancel_job() had flagged. The
-- stalled run does not count as an attempt.
-- Returns {recovered ids}, {dead-lettered ids}.
local function recover(limit, max_stalled, dlq_enabled)
  local expired = redis.call('ZRANGEBYSCORE', K_ACTIVE, '-inf', int(NOW), 'LIMIT', 0, limit)
  local back, dead = {}, {}
  for i = 1, #expired do
    local id = expired[i]
    local jk = job_key(id)
    redis.call('ZREM', K_ACTIVE, id)
    if redis.call('EXISTS', jk) == 0 then
      -- The hash was deleted while the job ran: dead-letter a record of it rather than
      -- drop the job silently.
      dead_letter(jk, id, dlq_enabled,
        'job record missing: its hash key was deleted while the job was running', '')
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
