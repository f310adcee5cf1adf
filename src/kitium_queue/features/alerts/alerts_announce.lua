--[[
  alerts_announce.lua — a worker process says which alert rules it has, so that the
  leader does not take them for removed ones (kitium_queue.features.alerts, removed.py;
  alerts_sweep.lua reads it).

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]  how long the announcement holds (ms, 1 s to a day)
  ARGV[5..] the rules the process has

  alerts:configured  ZSET  rule -> until when (ms) a process announced having it: the
                     latest of the announcements (a process announcing for less does not
                     shorten another's); a time more than a day ahead (written by hand)
                     is replaced
  Returns { 'ok' } | { 'damaged', key, type } (it holds another type of key: nothing
  written).
]]
--@include lib_base

local DAY = 86400000
local key = PREFIX .. 'alerts:configured'
local hold = arg_int(ARGV[4], 60000, 1000, DAY)
local kt = key_type(key)
if kt ~= 'zset' and kt ~= 'none' then return { 'damaged', 'alerts:configured', kt } end
local till = NOW + hold
for i = 5, #ARGV do
  local cur = tonumber(redis.call('ZSCORE', key, ARGV[i]))
  if not cur or cur < till or cur > NOW + DAY then
    redis.call('ZADD', key, int(till), ARGV[i])
  end
end
return { 'ok' }
