--[[
  alerts_state.lua — record an alert rule's change of state, once, fenced by the
  leader's term (kitium_queue.features.alerts).

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]  rule name
  ARGV[5]  new state: 'firing' | 'ok'
  ARGV[6]  the leader term evaluating it (leader.py)
  ARGV[7]  the value seen (text)
  ARGV[8]  the rule's metric, ARGV[9] its threshold (text, for the log)

  alerts:state  HASH  rule -> '<state> <since ms> <term> <value>'
  alerts:log    STREAM  every change: rule, state, metric, value, threshold (~1000 kept)
  Returns { 'changed', log entry id } | { 'same' } (already in that state) | { 'stale' }
  (a later term recorded this rule: this leader was deposed; nothing written) |
  { 'damaged', key, type } (alerts:state or alerts:log holds another type of key, written
  by hand: nothing written, so the change is recorded and reported once it is repaired).
]]
--@include lib_base

local key = PREFIX .. 'alerts:state'
local log_key = PREFIX .. 'alerts:log'
local rule, state, term = ARGV[4], ARGV[5], arg_int(ARGV[6], 0, 0, MAX_MS)
if state ~= 'firing' and state ~= 'ok' then
  return bad_arg('alerts_state', "state must be 'firing' or 'ok'")
end
-- Both keys are checked before the first write: a change is recorded whole (state and
-- log entry) or not at all.
local kt = key_type(key)
if kt ~= 'hash' and kt ~= 'none' then return { 'damaged', 'alerts:state', kt } end
kt = key_type(log_key)
if kt ~= 'stream' and kt ~= 'none' then return { 'damaged', 'alerts:log', kt } end
local cur = redis.call('HGET', key, rule)
if cur then
  local st, _, t = string.match(cur, '^(%S+) (%S+) (%S+)')
  -- Only a term as leader.py counts them fences this leader off: a record written by
  -- hand ('inf', 1e300, twenty digits...) would stop the rule for good; it is replaced.
  if t and (#t > 15 or not string.match(t, '^%d+$')) then st, t = nil, nil end
  if tonumber(t) and tonumber(t) > term then return { 'stale' } end
  if st == state then
    redis.call('HSET', key, rule, st .. ' ' .. string.match(cur, '^%S+ (%S+)') .. ' ' ..
      int(term) .. ' ' .. ARGV[7])
    return { 'same' }
  end
elseif state == 'ok' then
  redis.call('HSET', key, rule, 'ok ' .. NOW_S .. ' ' .. int(term) .. ' ' .. ARGV[7])
  return { 'same' }
end
redis.call('HSET', key, rule, state .. ' ' .. NOW_S .. ' ' .. int(term) .. ' ' .. ARGV[7])
local eid = redis.call('XADD', log_key, 'MAXLEN', '~', '1000', '*', 'rule', rule,
  'state', state, 'metric', ARGV[8], 'value', ARGV[7], 'threshold', ARGV[9])
return { 'changed', eid }
