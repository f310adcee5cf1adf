--[[
  tn_usage.lua — one tenant's counts in one queue, read atomically (read only).

  KEYS[1]  <prefix>:{<queue>}:tn:<tenant>      HASH  quota copy and counts (prelude.lua)
  KEYS[2]  <prefix>:{<queue>}:tn-run:<tenant>  SET   its running jobs
  KEYS[3]  <prefix>:{<queue>}:tn-tk:<tenant>   SET   its ticket holders in wait
  KEYS[4]  <prefix>:{<queue>}:parked:t:<tenant> ZSET its lane
  ARGV[1]  the queue's key prefix <prefix>:{<queue>}: (job records are <prefix>job:<id>,
           under the same hash tag)
  Returns { on, version, unfinished, running, tickets, in lane, rate starts in the
  current window (0 when it ended), rate max, window ends at (ms or 0), done, failed,
  now (ms, Redis clock) }. Running counts the members of the running set whose job is
  active (a member left behind by a record deleted by hand is not counted; the set is
  bounded by the workers' slots, and above 10,000 members its size is given as is).
  A key of another type (written by hand) reads as empty, and its name is appended
  to the reply (after now) for the caller to report. Any other error (a command the
  Redis user may not run: NOPERM) fails the script as redis.call would: it is no
  damage, and the caller reports the permission to grant.
]]
local damaged = {}
-- An error reply of redis.pcall: raised again unless it is WRONGTYPE (tostring: the
-- memory:// backend's error replies are not Lua strings).
local function wrongtype(r)
  if type(r) == 'table' and r.err then
    if not string.find(tostring(r.err), 'WRONGTYPE', 1, true) then error(r) end
    return true
  end
  return false
end
-- A command on one of the keys; nil (the key noted) when it holds another type.
local function read(...)
  local r = redis.pcall(...)
  if wrongtype(r) then
    local key = select(2, ...)
    damaged[#damaged + 1] = key
    return nil
  end
  return r
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local f = read('HMGET', KEYS[1], 'on', 'v', 'n', 'rlm', 'rld', 'rw', 'rn', 'done', 'fail') or {}
local rld, rw = tonumber(f[5]) or 0, tonumber(f[6])
local used, ends = 0, 0
if rw and rld > 0 and now < rw + rld then
  used, ends = tonumber(f[7]) or 0, rw + rld
end
local running = read('SCARD', KEYS[2]) or 0
if running <= 10000 then
  local members = read('SMEMBERS', KEYS[2]) or {}
  running = 0
  for i = 1, #members do
    local st = redis.pcall('HGET', ARGV[1] .. 'job:' .. members[i], 'st')
    -- A job record of another type (damaged) is not counted as running.
    if not wrongtype(st) and st == 'active' then
      running = running + 1
    end
  end
end
local out = { f[1] or '', f[2] or '0', f[3] or '0', running,
  read('SCARD', KEYS[3]) or 0, read('ZCARD', KEYS[4]) or 0, used, f[4] or '0',
  string.format('%.0f', ends), f[8] or '0', f[9] or '0', string.format('%.0f', now) }
for i = 1, #damaged do out[#out + 1] = damaged[i] end
return out
