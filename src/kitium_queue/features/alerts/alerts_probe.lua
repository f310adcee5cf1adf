--[[
  alerts_probe.lua — read the figures alert rules are evaluated on, in one atomic call
  (kitium_queue.features.alerts, the leader-only alert service).

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]  width of an outcome bucket (ms), as compiled into the release fragment
  ARGV[5..] windows (ms, at most 16), for the figures counted over a window

  Returns { now, waiting, oldest, { dlq, completed, retrying, failed } per window }:
    waiting   jobs in wait
    oldest    the creation time (ms) of the oldest head of the priority bands in wait
              (at most 64 bands looked at; LIFO jobs aside), or -1 when wait is empty
    dlq       jobs dead-lettered within the window (their score in dlq)
    completed / retrying / failed
              runs that ended so within the window, from the outcome buckets
              (alerts:o:<bucket>, written by the feature's release fragment; a bucket
              that is not a hash counts as none)
]]
--@include lib_base

local B = arg_int(ARGV[4], 5000, 1000, 3600000)
if #ARGV - 4 > 16 then return bad_arg('alerts_probe', 'at most 16 windows') end
local BAND = 68719476736   -- 2^36, as lib_jobs.lua
local waiting = redis.call('ZCARD', K_WAIT)
local oldest = -1
local from = '-inf'
for _ = 1, 64 do
  local head = redis.call('ZRANGEBYSCORE', K_WAIT, from, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if #head == 0 then break end
  local ts = tonumber(redis.pcall('HGET', job_key(head[1]), 'ts'))
  -- A creation time written by hand that is no finite time (nan, inf, negative) is
  -- skipped: it must not make every rule of the queue unreadable.
  if ts and ts == ts and ts >= 0 and ts < math.huge and (oldest < 0 or ts < oldest) then
    oldest = ts
  end
  local band = math.floor(num(head[2]) / BAND)
  from = int((band + 1) * BAND)
end
local out = { NOW_S, waiting, int(oldest) }
for i = 5, #ARGV do
  local w = arg_int(ARGV[i], 60000, 1, MAX_MS)
  local dlq = redis.call('ZCOUNT', K_DLQ, '(' .. int(NOW - w), '+inf')
  local c, r, f = 0, 0, 0
  local last = math.floor(NOW / B)
  local first = math.floor((NOW - w) / B) + 1
  if last - first > 2000 then first = last - 2000 end
  for b = first, last do
    -- A bucket damaged by hand (another type of key) counts as no runs: it must not
    -- keep every rule of the queue from being evaluated.
    local v = redis.pcall('HMGET', PREFIX .. 'alerts:o:' .. int(b), 'c', 'r', 'f')
    if type(v) == 'table' and not v.err then
      c, r, f = c + num(v[1]), r + num(v[2]), f + num(v[3])
    end
  end
  out[#out + 1] = { dlq, int(c), int(r), int(f) }
end
return out
