--[[
  tn_usage.lua — one tenant's counts in one queue, read atomically (read only).

  KEYS[1]  <prefix>:{<queue>}:tn:<tenant>      HASH  quota copy and counts (prelude.lua)
  KEYS[2]  <prefix>:{<queue>}:tn-run:<tenant>  SET   its running jobs
  KEYS[3]  <prefix>:{<queue>}:tn-tk:<tenant>   SET   its ticket holders in wait
  KEYS[4]  <prefix>:{<queue>}:parked:t:<tenant> ZSET its lane
  Returns { on, version, unfinished, running, tickets, in lane, rate starts in the
  current window (0 when it ended), rate max, window ends at (ms or 0), done, failed,
  now (ms, Redis clock) }.
]]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local f = redis.call('HMGET', KEYS[1], 'on', 'v', 'n', 'rlm', 'rld', 'rw', 'rn', 'done', 'fail')
local rld, rw = tonumber(f[5]) or 0, tonumber(f[6])
local used, ends = 0, 0
if rw and rld > 0 and now < rw + rld then
  used, ends = tonumber(f[7]) or 0, rw + rld
end
return { f[1] or '', f[2] or '0', f[3] or '0', redis.call('SCARD', KEYS[2]),
  redis.call('SCARD', KEYS[3]), redis.call('ZCARD', KEYS[4]), used, f[4] or '0',
  string.format('%.0f', ends), f[8] or '0', f[9] or '0', string.format('%.0f', now) }
