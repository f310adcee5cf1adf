--[[
  rg_sched.lua — copy the schedules of the primary onto this copy (a secondary), so the
  new primary of a failover fires them from where the old one left them (a tick fired on
  both is added once: its job id sched:<id>:<tick> exists).

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]  'put': ARGV[5..] schedules, each as: id, n, then n field/value pairs of its
                  hash (schedule_keys.lua), at most 1000 schedules
           'prune': ARGV[5..] the ids of every schedule of the primary: the others are
                  deleted here
  Malformed arguments are refused before the first write (KQ_BAD_ARGUMENT).
  Returns how many schedules were written or deleted.
]]
--@include lib_base
--@include schedule_keys

local op = ARGV[4]
if op == 'put' then
  -- Check the whole layout first: nothing is written unless all of it is sound.
  local plan, i = {}, 5
  while i <= #ARGV do
    local n = tonumber(ARGV[i + 1])
    if ARGV[i] == '' or n == nil or n < 0 or n > 100 or n ~= math.floor(n) or
      i + 1 + 2 * n > #ARGV then
      return bad_arg('rg_sched', 'malformed schedule at ARGV[' .. i .. ']')
    end
    plan[#plan + 1] = { i, n }
    i = i + 2 + 2 * n
  end
  if #plan > 1000 then return bad_arg('rg_sched', 'at most 1000 schedules per call') end
  for _, p in ipairs(plan) do
    local at, n = p[1], p[2]
    local id = ARGV[at]
    local sk = schedule_key(id)
    redis.call('DEL', sk)
    local h = {}
    for k = 0, n - 1 do
      local name, value = ARGV[at + 2 + 2 * k], ARGV[at + 3 + 2 * k]
      redis.call('HSET', sk, name, value)
      h[name] = value
    end
    redis.call('ZADD', K_SCHEDULES, int(num(h.ca)), id)
    local due = tonumber(h.due)
    if due and h.paused ~= '1' and h.done ~= '1' then
      redis.call('ZADD', K_SCHED_DUE, int(due), id)
    else
      redis.call('ZREM', K_SCHED_DUE, id)
    end
    schedules_changed(id)
  end
  return #plan
elseif op == 'prune' then
  local keep = {}
  for i = 5, #ARGV do keep[ARGV[i]] = true end
  local n = 0
  local ids = redis.call('ZRANGE', K_SCHEDULES, 0, BATCH_MAX - 1)
  for _, id in ipairs(ids) do
    if not keep[id] then
      redis.call('DEL', schedule_key(id))
      redis.call('ZREM', K_SCHEDULES, id)
      redis.call('ZREM', K_SCHED_DUE, id)
      schedules_changed(id)
      n = n + 1
    end
  end
  return n
end
return bad_arg('rg_sched', 'unknown op ' .. tostring(op))
