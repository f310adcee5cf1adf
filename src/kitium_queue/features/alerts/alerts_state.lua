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
  ARGV[10] the key (after PREFIX) of the counter that issues the leader's terms
           (leader_acquire.lua: leader:alerts:term)

  alerts:state  HASH  rule -> '<state> <since ms> <term> <value> <metric> <threshold>'
                (a record an earlier release wrote has the first four only)
  alerts:stored ZSET  (score 0) the rules with a record in alerts:state, walked by the
                leader's sweep of removed rules (alerts_sweep.lua); skipped when it holds
                another type of key (the sweep says so)
  alerts:log    STREAM  every change: rule, state, metric, value, threshold (~1000 kept)
  alerts:unreported  ZSET  log entry ids of changes recorded and not yet reported (score:
                the time recorded; at most 1000): the leader removes an id once it has
                reported the change, and a new leader reports those left by one that
                died in between (AlertManager.report_unreported)
  Returns { 'changed', log entry id, forged } | { 'same', '', forged } (already in that
  state) | { 'stale' } (a later term recorded this rule: this leader was deposed; nothing
  written) | { 'damaged', key, type } (alerts:state or alerts:log holds another type of
  key, written by hand: nothing written, so the change is recorded and reported once it
  is repaired; alerts:unreported likewise).

  A recorded term fences this leader off only if a leader could have had it. One that
  is not a count as leader.py keeps ('inf', 1e300, twenty digits...) is replaced. So is
  one above the counter of ARGV[10] when this leader's term is the counter's (it is the
  current leader): no leader was ever given it (written by hand, or left by another
  deployment whose counter went further); ``forged`` is then that term ('' otherwise),
  for the caller to report. Without a counter (AlertManager.evaluate called outside a
  leader service) or with another term, the record alone fences, as before.
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
local unreported = PREFIX .. 'alerts:unreported'
kt = key_type(unreported)
if kt ~= 'zset' and kt ~= 'none' then return { 'damaged', 'alerts:unreported', kt } end
-- The latest term issued (a read only: a counter of another type or not a count is
-- leader_acquire.lua's to report; then the record alone fences, as without a counter).
local issued = nil
local counter = PREFIX .. ARGV[10]
if key_type(counter) == 'string' then
  local c = redis.call('GET', counter)
  if #c <= 15 and string.match(c, '^%d+$') then issued = tonumber(c) end
end
-- The index of the rules recorded is the sweep's, not the change's: another type of key
-- there keeps no change from being recorded.
local stored = PREFIX .. 'alerts:stored'
local indexed = key_type(stored)
indexed = indexed == 'zset' or indexed == 'none'
-- The rule's record: its state since `since`, this term, the value seen, and the metric
-- and threshold, which a clearing for a removed rule (alerts_sweep.lua) reports.
local function record(st, since)
  redis.call('HSET', key, rule, st .. ' ' .. since .. ' ' .. int(term) .. ' ' .. ARGV[7] ..
    ' ' .. ARGV[8] .. ' ' .. ARGV[9])
  if indexed then redis.call('ZADD', stored, 0, rule) end
end
local forged = ''
local cur = redis.call('HGET', key, rule)
if cur then
  local st, _, t = string.match(cur, '^(%S+) (%S+) (%S+)')
  -- Only a term as leader.py counts them fences this leader off: a record written by
  -- hand ('inf', 1e300, twenty digits...) would stop the rule for good; it is replaced.
  if t and (#t > 15 or not string.match(t, '^%d+$')) then st, t = nil, nil end
  -- Nor does a term no leader was ever given: above the counter that issues them, it
  -- can only be forged or from another deployment, and would stop the rule until the
  -- counter passed it. The current leader (its term is the counter's) replaces it and
  -- reports it; a deposed one (a lower term) is still fenced off by it.
  if t and term == issued and tonumber(t) > issued then forged, t = t, nil end
  if tonumber(t) and tonumber(t) > term then return { 'stale' } end
  if st == state then
    record(st, string.match(cur, '^%S+ (%S+)'))
    return { 'same', '', forged }
  end
elseif state == 'ok' then
  record('ok', NOW_S)
  return { 'same', '', '' }
end
record(state, NOW_S)
local eid = redis.call('XADD', log_key, 'MAXLEN', '~', '1000', '*', 'rule', rule,
  'state', state, 'metric', ARGV[8], 'value', ARGV[7], 'threshold', ARGV[9])
redis.call('ZADD', unreported, NOW_S, eid)
if redis.call('ZCARD', unreported) > 1000 then redis.call('ZPOPMIN', unreported) end
return { 'changed', eid, forged }
