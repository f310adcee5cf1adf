--[[
  group_clear.lua — clear()'s step for FIFO message groups (features.groups.manager).

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4..] group ids.

  Run once the queue's jobs, lines and turns are gone (lua/clear.lua). What counted the
  jobs goes: the count (n), the totals (done, fail) and the rate window (rw, rn). The
  settings stay (paused, conc, max, rlm, rld), as the queue's own do: a paused group
  stays paused. A group left without settings (its hash gone with its last field)
  leaves the index; one with settings stays in it. A key of another type (damaged by
  hand) goes whole. Returns 0.
]]
--@include lib_base

local index = PREFIX .. 'groups'
local t = redis.call('TYPE', index)['ok']
if t ~= 'zset' and t ~= 'none' then redis.call('UNLINK', index) end
for i = 4, #ARGV do
  local g = ARGV[i]
  local gkey = PREFIX .. 'grp:' .. g
  t = redis.call('TYPE', gkey)['ok']
  if t == 'hash' then
    redis.call('HDEL', gkey, 'n', 'done', 'fail', 'rw', 'rn')
  elseif t ~= 'none' then
    redis.call('UNLINK', gkey)
  end
  if redis.call('EXISTS', gkey) == 1 then
    redis.call('PERSIST', gkey)
    redis.call('ZADD', index, 0, g)
  else
    redis.call('ZREM', index, g)
  end
end
return 0
