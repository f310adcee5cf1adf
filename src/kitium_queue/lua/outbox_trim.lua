--[[
  outbox_trim.lua — delete outbox entries that every consumer group has acknowledged.

  KEYS[1] outbox STREAM, KEYS[2] dead STREAM (unused).
  ARGV[1] queue key prefix, ARGV[2] most entries removed by this call, ARGV[3] most
  removed one by one (the rest go as whole stream nodes, which is cheaper); both >= 1.

  The floor is the lowest id any group still needs: its oldest pending entry or, with
  nothing pending, the entry after the last one it was handed. Only entries below the
  floor of every group are removed, so an unacknowledged entry is never deleted. With no
  group at all nothing is removed (nobody has read those entries yet).

  Returns { entries removed, floor ('' when there is no stream, or no group) }.
]]
-- No stream, or a key of another type (damaged by hand: nothing to trim; stats() says).
if redis.call('TYPE', KEYS[1])['ok'] ~= 'stream' then return { 0, '' } end
-- Budgets are checked before the first write: at least 1 each (LIMIT 0 means no limit).
local budget = math.max(math.floor(tonumber(ARGV[2]) or 10000), 1)
local exact = math.max(math.floor(tonumber(ARGV[3]) or 100), 1)

local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local function less(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end

local floor = nil
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  local bound = info['last-delivered-id']
  if tonumber(info['pending']) > 0 then
    bound = redis.call('XPENDING', KEYS[1], info['name'])[2]
  else
    local ms, seq = string.match(bound, '^(%d+)-(%d+)$')
    -- A sequence too long for a double keeps the last entry: one too many, never less.
    if #seq < 15 then bound = ms .. '-' .. string.format('%d', tonumber(seq) + 1) end
  end
  if floor == nil or less(bound, floor) then floor = bound end
end
if floor == nil then return { 0, '' } end

-- Whole nodes below the floor first (cheap; LIMIT bounds the work), then single
-- entries: at most ARGV[3], and never more than ARGV[2] in all.
local removed = redis.call('XTRIM', KEYS[1], 'MINID', '~', floor, 'LIMIT', budget)
local n = math.min(exact, budget - removed)
if n > 0 then
  local head = redis.call('XRANGE', KEYS[1], '-', '(' .. floor, 'COUNT', n + 1)
  if #head > 0 then
    local upto = floor
    if #head > n then upto = head[n + 1][1] end
    removed = removed + redis.call('XTRIM', KEYS[1], 'MINID', upto)
  end
end
return { removed, floor }
