--[[
  group_admin.lua — change one FIFO message group (kitium_queue.features.groups).

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]  operation: 'pause' | 'resume' | 'set'
  ARGV[5]  group id
  ARGV[6..9] for 'set': concurrency, max_group_size, rate limit max, rate limit
           duration ms; '' = the default (the field is removed)
  The manager's declarations (default concurrency, ...) are compiled in (prelude.lua).

  pause:  the group's jobs that have not started stay where they are, in its line; jobs
          that hold a turn and are not running are held at their next claim; running
          jobs finish. No job of the group starts until resume.
  resume: held jobs go back to wait, and the line hands out the group's free turns.
  set:    new settings; a raised concurrency hands out the extra turns at once.
  Returns { paused (0|1), concurrency, jobs moved to wait }; KQ_BAD_STATE (nothing
  written) when a key of the group holds another type (damaged by hand).
  Events: group-paused | group-resumed | group-updated (id = the group id).
]]
--@include lib_base
--@include lib_events
--@include lib_parking
@PRELUDE@

local op, g = ARGV[4], ARGV[5]
if g == nil or g == '' then return bad_arg('group_admin', 'empty group id') end
if op ~= 'pause' and op ~= 'resume' and op ~= 'set' then
  return bad_arg('group_admin', 'unknown operation ' .. tostring(op))
end
local gkey = PREFIX .. 'grp:' .. g
local run = PREFIX .. 'grp-run:' .. g
local moved = 0
-- A key of the group damaged by hand (another type): refused before the first write.
local bad = group_damage(g)
if bad then return redis.error_reply(bad) end

local function free_turns()
  local f = redis.call('HMGET', gkey, 'paused', 'conc')
  if f[1] == '1' then return 0 end
  return conc_of(f[2]) - redis.call('SCARD', run)
end

if op == 'set' then
  -- Checked first (bad_arg writes nothing), written after.
  local names = { 'conc', 'max', 'rlm', 'rld' }
  local limits = { 1000000, 1000000000, 1000000000, MAX_MS }
  local values = {}
  for i = 1, 4 do
    local v = ARGV[5 + i]
    if v ~= nil and v ~= '' then
      local n = tonumber(v)
      if not n or n ~= math.floor(n) or n < 0 or n > limits[i] then
        return bad_arg('group_admin', names[i] .. ' out of range: ' .. tostring(v))
      end
      values[i] = int(n)
    end
  end
  for i = 1, 4 do
    if values[i] then
      redis.call('HSET', gkey, names[i], values[i])
    else
      redis.call('HDEL', gkey, names[i])
    end
  end
  if values[3] == nil or values[4] == nil then redis.call('HDEL', gkey, 'rw', 'rn') end
  redis.call('ZADD', PREFIX .. 'groups', 0, g)
  redis.call('PERSIST', gkey)
  moved = hand_turns(g, free_turns())
  emit('group-updated', g)
elseif op == 'pause' then
  redis.call('HSET', gkey, 'paused', '1')
  redis.call('PERSIST', gkey)
  redis.call('ZADD', PREFIX .. 'groups', 0, g)
  emit('group-paused', g)
else
  redis.call('HDEL', gkey, 'paused')
  moved = unpark('gh:' .. g, UNPARK_MAX)
  moved = moved + hand_turns(g, free_turns())
  emit('group-resumed', g)
end
-- A group named only by this call (no jobs; settings back to the defaults) does not
-- stay in the index.
if op ~= 'pause' then maybe_forget(g) end
local f = redis.call('HMGET', gkey, 'paused', 'conc')
return { f[1] == '1' and 1 or 0, conc_of(f[2]), moved }
