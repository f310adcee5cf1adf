--[[
  lib_base.lua — fragment: keys, time and arguments. Every script includes it (directly
  or through another fragment) first; it reads the shared KEYS vector and ARGV prefix.

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
             <prefix>idem:<key>, chosen ids of the window <prefix>jids (enqueue.lua),
             parked jobs <prefix>parked:<blocker> (lib_parking.lua).
             They share the hash tag of KEYS, so scripts stay cluster-safe.
    ARGV[2]  now in ms; empty string = use the Redis server clock (production default,
             immune to client clock skew). Tests pass an explicit time: an integer from 0
             to MAX_MS; anything else is refused (KQ_BAD_ARGUMENT, before any write).
    ARGV[3]  approximate max length of the event stream, clamped to 0..MAX_MS (missing
             or not a number: 10000).

  Script-specific arguments start at ARGV[4].

  Rules every script and fragment keeps (Redis keeps the writes a script made before it
  failed, so a failure after the first write leaves a half-done transition behind):
    * numeric arguments are checked or clamped at the top (arg_int), before any write;
    * lists of arbitrary length never go to unpack() whole: zrem_all / zadd_all /
      flush_wait (lib_sets.lua) send at most 500 members (1000 arguments) per command;
    * every per-call amount of work is bounded (BATCH_MAX jobs), and the client calls
      again for more.

  Provides: K_* (the KEYS above), PREFIX, MAX_MS, BATCH_MAX, NOW, NOW_S, EVENTS_MAXLEN(_S),
  arg_int, bad_arg, int, num, job_key, key_type, keep_running_when_full, count_missing,
  check_keys, check_key, parked_damaged, damaged_key, damaged_reply, key_list, KEY_TYPES.
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
-- Longest delay, hold or lease (ms): limits.MAX_DELAY_MS, ten years (tests/test_wire.py
-- checks the two agree).
local MAX_DELAY_MS = 315360000000
-- Most jobs one call moves, examines or deletes (promote, recover, drain, clear, retry,
-- replay, trim_finished, unpark), so no call blocks Redis for long; callers loop for more.
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

-- The error reply for a malformed argument, sent before the script's first write
-- (ScriptArgumentError in Python).
local function bad_arg(script, detail)
  return redis.error_reply('KQ_BAD_ARGUMENT ' .. script .. ': ' .. detail ..
    '; nothing was written')
end

local EVENTS_MAXLEN = arg_int(ARGV[3], 10000, 0, MAX_MS)

local NOW
-- The same clock in units of 10 µs (claim.lua's lease tokens follow it).
local CLOCK_10US
if ARGV[2] ~= nil and ARGV[2] ~= '' then
  NOW = tonumber(ARGV[2])
  -- An explicit clock that is not a usable time would surface later as a failed ZADD
  -- or a "nan" score, after writes: refuse it here, before any.
  if NOW == nil or NOW ~= NOW or NOW < 0 or NOW > MAX_MS then
    return bad_arg('now', 'ARGV[2] must be empty (server clock) or a time in ms from 0 '
      .. 'to ' .. string.format('%.0f', MAX_MS) .. ', got ' .. tostring(ARGV[2]))
  end
  NOW = math.floor(NOW)
  CLOCK_10US = NOW * 100
else
  local t = redis.call('TIME')
  NOW = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  CLOCK_10US = tonumber(t[1]) * 100000 + math.floor(tonumber(t[2]) / 10)
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

-- When Redis is out of memory (maxmemory with noeviction) it refuses a script's first
-- write if that command may grow memory, and lets a script that already wrote go on (so
-- a script is never cut in half). The scripts that keep running work going -- claim,
-- lease renewal, recovery -- must still run on a full Redis: draining is what frees
-- memory, and a lease that cannot be renewed would make a job run twice. They call this
-- first: a write that cannot grow memory (a field that never exists), after which their
-- writes are allowed. Enqueue does not: a full Redis refuses new jobs, whole.
-- What each key of the shared layout holds: a type, or 'integer' for a counter (a string
-- INCR accepts).
local KEY_TYPES = { 'zset', 'zset', 'zset', 'zset', 'zset', 'zset', 'hash', 'stream', 'zset',
  'integer', 'integer', 'integer' }

-- The error reply for `key` found holding `found` (a Redis type) where `expected` was
-- due: "KQ_DAMAGED_KEY <found> <expected> <key>" (DamagedKeyError in Python, which says
-- how to repair it).
local function damaged_reply(key, found, expected)
  return redis.error_reply('KQ_DAMAGED_KEY ' .. found .. ' ' .. expected .. ' ' .. key)
end

-- damaged_reply for KEYS[i], checked before the script's first write.
local function damaged_key(i, found)
  return damaged_reply(KEYS[i], found, KEY_TYPES[i])
end

-- The indices of layout keys a call will write, each once, for check_keys(unpack(need)):
-- returns the list (starting with `...`) and the function that adds to it.
local function key_list(...)
  local need, listed = {}, {}
  local function add(...)
    local idx = { ... }
    for n = 1, #idx do
      if not listed[idx[n]] then need[#need + 1] = idx[n] end
      listed[idx[n]] = true
    end
  end
  add(...)
  return need, add
end

-- A key of the layout damaged outside kitium-queue (overwritten with another type, a
-- counter holding something that is not an integer) fails the first command that uses
-- it; after the script's first write that would leave a half-done transition (a job
-- popped from wait and in no set). A script calls check_keys(i, ...) with the indices of
-- the keys it may write after its first write, before that write: the error reply for
-- the first damaged one, or nil. One command per key and call, never per job.
local function check_keys(...)
  local idx = { ... }
  for n = 1, #idx do
    local i = idx[n]
    if i >= 10 then
      local v = redis.pcall('GET', KEYS[i])
      if type(v) == 'table' then return damaged_key(i, redis.call('TYPE', KEYS[i])['ok']) end
      -- INCR takes an integer without sign or leading zeros; 15 digits stay exact here.
      if v and not (#v <= 15 and (v == '0' or string.match(v, '^%-?[1-9]%d*$'))) then
        return damaged_key(i, 'string')
      end
    else
      local t = redis.call('TYPE', KEYS[i])['ok']
      if t ~= 'none' and t ~= KEY_TYPES[i] then return damaged_key(i, t) end
    end
  end
  return nil
end

-- check_keys for a key outside the layout that a script writes after its first write
-- (the parked index, the schedule index): the error reply "KQ_DAMAGED_KEY <found>
-- <expected> <key>" when it holds another type than `expected`, or nil.
local function check_key(key, expected)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= expected then return damaged_reply(key, t, expected) end
  return nil
end

-- meta (where lib_parking.lua keeps the total of parked jobs) when a call may take
-- parked jobs out of their blocker: with `blocker` (a job parked behind it is removed),
-- or when the index <prefix>parked exists (drain, clear). The parking keys themselves
-- are skipped when damaged, never failing a call (lib_parking.lua). The KQ_DAMAGED_KEY
-- reply, or nil.
local function parked_damaged(blocker)
  if not blocker and redis.call('EXISTS', PREFIX .. 'parked') == 0 then return nil end
  return check_keys(7)
end

-- Returns the damaged_key reply when meta holds another type (its first command: nothing
-- was written), else nil.
local function keep_running_when_full()
  local r = redis.pcall('HDEL', K_META, '-')
  if type(r) == 'table' and r.err then
    if string.find(r.err, 'WRONGTYPE', 1, true) then
      return damaged_key(7, redis.call('TYPE', K_META)['ok'])
    end
    return r
  end
  return nil
end

-- A job record found missing: its hash was deleted or evicted (maxmemory-policy
-- allkeys-*, with settings.allow_eviction) while the job sat in a state set. Counted in
-- meta 'missing' (QueueStats.missing_records) with the time last seen ('missing_at');
-- pcall: a damaged counter must never fail the transition that found the record gone.
local function count_missing()
  redis.pcall('HINCRBY', K_META, 'missing', 1)
  redis.pcall('HSET', K_META, 'missing_at', NOW_S)
end

local function job_key(id)
  return PREFIX .. 'job:' .. id
end

-- 'hash' for a sound job record, 'none' when it is gone, anything else when the key was
-- overwritten with another type (damaged by hand): such a key must not make a script
-- fail half way, so callers treat it like a missing record.
local function key_type(jk)
  return redis.call('TYPE', jk)['ok']
end
