--[[
  alerts_sweep.lua — the leader's sweep of the records of alert rules no process has
  any more (removed from the configuration, or renamed), a bounded part per evaluation
  (kitium_queue.features.alerts, removed.py).

  A record in alerts:state whose rule the evaluating leader does not have (ARGV[8..])
  and that no running process announced (alerts:configured) is dropped; one that was
  firing first records its clearing, as alerts_state.lua records a change: an entry of
  alerts:log (state 'ok', reason 'rule-removed', the metric and threshold the record
  kept, no value) whose id goes into alerts:unreported until it is reported.

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]  the leader term evaluating (leader.py)
  ARGV[5]  the key (after PREFIX) of the counter that issues the leader's terms
  ARGV[6]  where the walk of alerts:stored resumes (a rank; 0: from the start)
  ARGV[7]  members of alerts:stored looked at, at most (1 to 1000)
  ARGV[8..] the rules the evaluating leader has

  alerts:stored      ZSET  (score 0) the rules with a record (alerts_state.lua adds them),
                     and the member '*' (no rule's name): once it is absent the index is
                     filled from the leader's rules and the rules of the latest 1000
                     entries of alerts:log that have a record (records an earlier release
                     wrote without indexing them: a firing one has its change in the log)
  alerts:configured  ZSET  rule -> until when (ms) a running process announced having
                     it (alerts_announce.lua); a time past, or more than a day ahead
                     (no process announces that far: written by hand), is none, and up
                     to ARGV[7] such members are removed per call

  A record whose term is above this leader's is kept (a later leader wrote it), unless
  this leader's term is the counter's and the record's above it (no leader was ever
  given it: forged, as alerts_state.lua says). A member that is no rule's name (written
  by hand) has its record dropped without a clearing.

  Returns { 'swept', next rank (0: the walk starts again), records dropped, { eid, rule,
  metric, threshold } per clearing recorded } | { 'stale' } (a later term was issued:
  this leader was deposed; nothing written) | { 'damaged', key, type } (a key of the
  alerts holds another type of key, written by hand: nothing written).
]]
--@include lib_base

local MARK, DAY = '*', 86400000
local term = arg_int(ARGV[4], 0, 0, MAX_MS)
local at = arg_int(ARGV[6], 0, 0, MAX_MS)
local page = arg_int(ARGV[7], 100, 1, 1000)
local state_key = PREFIX .. 'alerts:state'
local log_key = PREFIX .. 'alerts:log'
local unreported = PREFIX .. 'alerts:unreported'
local stored = PREFIX .. 'alerts:stored'
local announced = PREFIX .. 'alerts:configured'
-- Every key is checked before the first write: a clearing is recorded whole (log entry,
-- unreported id, record dropped) or not at all.
for _, k in ipairs({ { 'alerts:state', 'hash' }, { 'alerts:log', 'stream' },
    { 'alerts:unreported', 'zset' }, { 'alerts:stored', 'zset' },
    { 'alerts:configured', 'zset' } }) do
  local kt = key_type(PREFIX .. k[1])
  if kt ~= k[2] and kt ~= 'none' then return { 'damaged', k[1], kt } end
end
local issued = nil
local counter = PREFIX .. ARGV[5]
if key_type(counter) == 'string' then
  local c = redis.call('GET', counter)
  if #c <= 15 and string.match(c, '^%d+$') then issued = tonumber(c) end
end
if issued and term < issued then return { 'stale' } end

local mine = {}
for i = 8, #ARGV do mine[ARGV[i]] = true end

local function index(rule)
  if rule ~= MARK and redis.call('HEXISTS', state_key, rule) == 1 then
    redis.call('ZADD', stored, 0, rule)
  end
end
if not redis.call('ZSCORE', stored, MARK) then
  for i = 8, #ARGV do index(ARGV[i]) end
  local seen = {}
  for _, entry in ipairs(redis.call('XREVRANGE', log_key, '+', '-', 'COUNT', 1000)) do
    local f = entry[2]
    for j = 1, #f - 1, 2 do
      if f[j] == 'rule' and not seen[f[j + 1]] then
        seen[f[j + 1]] = true
        index(f[j + 1])
      end
    end
  end
  redis.call('ZADD', stored, 0, MARK)
end

-- The first six words of a record at most (one written by hand may be long).
local function words(record)
  local out = {}
  for w in string.gmatch(record, '%S+') do
    out[#out + 1] = w
    if #out == 6 then break end
  end
  return out
end

-- Whether a record's term keeps it from this leader (a later leader wrote it).
local function later(t)
  if not t or #t > 15 or not string.match(t, '^%d+$') then return false end
  t = tonumber(t)
  if issued and term == issued and t > issued then return false end
  return t > term
end

local members = redis.call('ZRANGE', stored, at, at + page - 1)
local removed, dropped, out = 0, 0, {}
for _, rule in ipairs(members) do
  if rule ~= MARK and not mine[rule] then
    local till = tonumber(redis.call('ZSCORE', announced, rule))
    if not (till and till > NOW and till <= NOW + DAY) then
      local cur = redis.call('HGET', state_key, rule)
      local w = cur and words(cur) or {}
      if not later(w[3]) then
        local named = #rule <= 64 and string.match(rule, '^[%w_.:%-]+$')
        if w[1] == 'firing' and named then
          local metric, threshold = string.sub(w[5] or '', 1, 64), string.sub(w[6] or '', 1, 64)
          local eid = redis.call('XADD', log_key, 'MAXLEN', '~', '1000', '*', 'rule', rule,
            'state', 'ok', 'metric', metric, 'value', '', 'threshold', threshold,
            'reason', 'rule-removed')
          redis.call('ZADD', unreported, NOW_S, eid)
          if redis.call('ZCARD', unreported) > 1000 then redis.call('ZPOPMIN', unreported) end
          out[#out + 1] = { eid, rule, metric, threshold }
        end
        if cur then
          redis.call('HDEL', state_key, rule)
          dropped = dropped + 1
        end
        redis.call('ZREM', stored, rule)
        removed = removed + 1
      end
    end
  end
end
-- Announcements that ended (or that no process makes) go, a page at a time.
for _, range in ipairs({ { '-inf', '(' .. NOW_S }, { '(' .. int(NOW + DAY), '+inf' } }) do
  local gone = redis.call('ZRANGEBYSCORE', announced, range[1], range[2], 'LIMIT', 0, page)
  for _, rule in ipairs(gone) do redis.call('ZREM', announced, rule) end
end
local next_at = 0
if #members >= page then next_at = at + #members - removed end
return { 'swept', next_at, dropped, out }
