--[[
  append.lua — append entries to the audit chain, only if the chain still ends where
  the caller computed them from (AuditLog in features/audit/log.py). The caller made
  each entry's MAC with a key Redis never sees; this script checks the entries follow
  the current last entry (id, position n, prev = its MAC) and writes them, with an
  optional effect (a grant change, or a compare-and-set of one hash field such as a
  tenant's entry in the registry) and an optional trim, all or nothing.

  KEYS[1] audit STREAM
  KEYS[2] grants HASH of one principal (effects 'grant' / 'revoke'); the HASH of
          effects 'cas' / 'cas-new'; else unused
  KEYS[3] principals SET (effects 'grant' / 'revoke'; else unused)
  ARGV[1] expected id of the last entry ('' = the stream has no entry)
  ARGV[2] k: how many entries follow (1..100)
  ARGV[3] trim: after appending, remove the entries whose id is below this one ('' = no
          trim); it must be the id of an entry that exists or of one appended here
  ARGV[4] effect: '' | 'grant' | 'revoke' | 'cas' | 'cas-new' | 'denied' | 'denied-flush'
  ARGV[5] effect field (the queue pattern; the hash field of 'cas' / 'cas-new'),
  ARGV[6] its value (the grant, JSON; the new value of 'cas' / 'cas-new'),
  ARGV[7] the principal (member of KEYS[3]); for 'cas': the value the field must hold
          now ('cas-new': the field must not exist)
  ARGV[8..] k groups of 10 values: id, n, prev, who, act, res, out, meta, kid, mac

  Effects 'denied' / 'denied-flush' (the bound on refusals, features/audit/refusals.py):
  KEYS[2] the counter HASH of one (principal, action, resource): start, end (its
          window, ms), n (entries written in it), s (refusals counted, not written),
          who, res, meta (of its last entry, for a summary written by another process)
  KEYS[3] the ZSET of counters holding counted refusals (score: their window's end)
  ARGV[5] the counter's member in KEYS[3]
  ARGV[6] '<window ms> <entries per window> <ms a count is kept after its window>'
  ARGV[7] '' or '<start> <end> <s>': the first entry sums up that window of the counter
  'denied' appends a refusal (k = 1; k = 2 with its summary first): written while the
  window holds fewer than its entries; past them it is counted instead; after a window
  that counted refusals, only together with that window's summary. 'denied-flush'
  appends the summary alone (k = 1) and ends the window.

  Replies (nothing is ever written before every check passed):
    {'ok', now_ms, trimmed}
    {'conflict', last_id, last_n, last_mac, now_ms, top_id}: nothing written: the chain
        moved on, or the entries do not follow it (position, prev or id); recompute from
        that last entry, with ids above top_id (the highest id the stream ever had)
    {'absent', now_ms}: effect 'revoke' of a grant that does not exist; nothing written
    {'changed', now_ms}: effect 'cas' / 'cas-new' and the field does not hold the value
        expected (or exists); nothing written: read it again
    {'gone', now_ms}: the trim point is not in the stream (trimmed meanwhile); nothing
        written
    {'damaged', now_ms, key, type}: the stream, or the effect's hash or set, holds another
        type (written by hand); nothing written
    {'unchainable', now_ms, id, why}: the last entry (or the highest id) was changed
        outside kitium-queue so that no entry can follow it; nothing written
    {'suppressed', now_ms, s, end}: effect 'denied': the refusal was counted (the window
        holds its entries already); no entry written
    {'summary', now_ms, start, end, s}: effect 'denied': the counter's window is over
        with refusals counted: send its summary first (ARGV[7]); nothing written
    'changed' for 'denied' / 'denied-flush': the counter no longer holds ARGV[7] (or no
        summary is due): read it again
]]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function type_of(key)
  local ty = redis.call('TYPE', key)
  if type(ty) == 'table' then ty = ty['ok'] end
  return ty
end

local last_id, last_n, last_mac, top = '', 0, '', '0-0'
local stream_type = type_of(KEYS[1])
if stream_type ~= 'none' and stream_type ~= 'stream' then
  return { 'damaged', now, KEYS[1], stream_type }
end
if stream_type == 'stream' then
  local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  if #last > 0 then
    last_id = last[1][1]
    local f = last[1][2]
    local raw_n, raw_mac, twice = nil, nil, nil
    for i = 1, #f, 2 do
      if f[i] == 'n' then
        if raw_n then twice = 'n' end
        raw_n = f[i + 1]
      elseif f[i] == 'mac' then
        if raw_mac then twice = 'mac' end
        raw_mac = f[i + 1]
      end
    end
    -- The entry the next one links to must give a position and a MAC as the writer
    -- writes them; one changed outside kitium-queue cannot be continued.
    local why = nil
    if twice then
      why = 'it holds field ' .. twice .. ' twice'
    elseif not raw_n or #raw_n > 15 or not string.match(raw_n, '^[1-9]%d*$') then
      why = 'its position n is not a whole number of 1 to 15 digits'
    elseif not raw_mac or #raw_mac ~= 64 or not string.match(raw_mac, '^[0-9a-f]+$') then
      why = 'its MAC is not 64 hexadecimal digits'
    end
    if why then return { 'unchainable', now, last_id, why } end
    last_n, last_mac = tonumber(raw_n), raw_mac
  end
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then top = info[i + 1] end
  end
  -- Ids whose parts exceed 15 digits (beyond year 30000) were written by hand: no new
  -- id could follow them here reliably (Lua numbers are exact to 2^53 only).
  local ta, tb = string.match(top, '^(%d+)%-(%d+)$')
  if not ta or #ta > 15 or #tb > 15 then
    return { 'unchainable', now, top, 'the highest id the stream ever had lies beyond any clock' }
  end
end

local function parse(id)
  local a, b = string.match(id, '^(%d+)%-(%d+)$')
  if not a then return nil end
  return tonumber(a), tonumber(b)
end

local function after(x, y) -- is stream id x above stream id y?
  local xa, xb = parse(x)
  local ya, yb = parse(y)
  if not xa or not ya then return false end
  return xa > ya or (xa == ya and xb > yb)
end

local function conflict()
  return { 'conflict', last_id, last_n, last_mac, now, top }
end

if ARGV[1] ~= last_id then return conflict() end
local k = tonumber(ARGV[2])
if not k or k < 1 or k > 100 or #ARGV ~= 7 + 10 * k then return conflict() end

local prev_id, prev_mac, base = top, last_mac, 7
if last_id ~= '' and after(last_id, top) then prev_id = last_id end
local trim = ARGV[3]
local trim_is_new = false
for i = 1, k do
  local o = base + (i - 1) * 10
  local id = ARGV[o + 1]
  if not after(id, prev_id) then return conflict() end
  if tonumber(ARGV[o + 2]) ~= last_n + i then return conflict() end
  if ARGV[o + 3] ~= prev_mac then return conflict() end
  if id == trim then trim_is_new = true end
  prev_id, prev_mac = id, ARGV[o + 10]
end

if trim ~= '' and not trim_is_new then
  if #redis.call('XRANGE', KEYS[1], trim, trim) == 0 then return { 'gone', now } end
end
local effect = ARGV[4]
-- A grant hash or principals set of another type (written by hand) would fail a write
-- below after the entries were added: refuse the call before anything is written.
local function other_type(key, want)
  local ty = type_of(key)
  return ty ~= 'none' and ty ~= want
end
if effect == 'grant' or effect == 'revoke' or effect == 'cas' or effect == 'cas-new' then
  if other_type(KEYS[2], 'hash') then return { 'damaged', now, KEYS[2] } end
  if (effect == 'grant' or effect == 'revoke') and other_type(KEYS[3], 'set') then
    return { 'damaged', now, KEYS[3] }
  end
end
if effect == 'revoke' and redis.call('HEXISTS', KEYS[2], ARGV[5]) == 0 then
  return { 'absent', now }
end
if effect == 'cas' or effect == 'cas-new' then
  local cur = redis.call('HGET', KEYS[2], ARGV[5])
  if (effect == 'cas-new' and cur) or (effect == 'cas' and cur ~= ARGV[7]) then
    return { 'changed', now }
  end
end

local bound, window, keep = nil, 0, 0
if effect == 'denied' or effect == 'denied-flush' then
  if other_type(KEYS[2], 'hash') then return { 'damaged', now, KEYS[2] } end
  if other_type(KEYS[3], 'zset') then return { 'damaged', now, KEYS[3] } end
  local w, b, kp = string.match(ARGV[6], '^(%d+) (%d+) (%d+)$')
  if not w or #w > 12 or #b > 6 or #kp > 12 then return redis.error_reply('ERR bound') end
  window, keep = tonumber(w), tonumber(kp)
  local burst = tonumber(b)
  local function num(x)
    if type(x) ~= 'string' or #x > 15 or not string.match(x, '^%d+$') then return nil end
    return tonumber(x)
  end
  local c = redis.call('HMGET', KEYS[2], 'start', 'end', 'n', 's')
  local start, stop, n, s = num(c[1]), num(c[2]), num(c[3]), num(c[4])
  local state = ''
  -- A counter not written here (damaged by hand) starts a new window.
  if start and stop and n and s then state = c[1] .. ' ' .. c[2] .. ' ' .. c[4] else start = nil end
  if effect == 'denied-flush' then
    if not start then
      redis.call('ZREM', KEYS[3], ARGV[5])
      return { 'absent', now }
    end
    if k ~= 1 or ARGV[7] ~= state or s == 0 then return { 'changed', now } end
    bound = 'flush'
  elseif start and now < stop then
    if ARGV[7] ~= '' or k ~= 1 then return { 'changed', now } end
    if n >= burst then
      redis.call('HINCRBY', KEYS[2], 's', 1)
      redis.call('PEXPIRE', KEYS[2], stop - now + keep)
      redis.call('ZADD', KEYS[3], stop, ARGV[5])
      return { 'suppressed', now, s + 1, stop }
    end
    bound = 'count'
  elseif start and s > 0 then
    if ARGV[7] ~= state or k ~= 2 then return { 'summary', now, c[1], c[2], c[4] } end
    bound = 'new'
  else
    if ARGV[7] ~= '' or k ~= 1 then return { 'changed', now } end
    bound = 'new'
  end
end

-- Checks done: from here on every command is a write that cannot fail.
for i = 1, k do
  local o = base + (i - 1) * 10
  redis.call('XADD', KEYS[1], ARGV[o + 1],
    'n', ARGV[o + 2], 'prev', ARGV[o + 3], 'who', ARGV[o + 4], 'act', ARGV[o + 5],
    'res', ARGV[o + 6], 'out', ARGV[o + 7], 'meta', ARGV[o + 8], 'kid', ARGV[o + 9],
    'mac', ARGV[o + 10])
end
if effect == 'grant' then
  redis.call('HSET', KEYS[2], ARGV[5], ARGV[6])
  redis.call('SADD', KEYS[3], ARGV[7])
elseif effect == 'revoke' then
  redis.call('HDEL', KEYS[2], ARGV[5])
  if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('SREM', KEYS[3], ARGV[7]) end
elseif effect == 'cas' or effect == 'cas-new' then
  redis.call('HSET', KEYS[2], ARGV[5], ARGV[6])
end
if bound == 'count' then
  redis.call('HINCRBY', KEYS[2], 'n', 1)
elseif bound == 'new' then
  local o = base + (k - 1) * 10
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[2], 'start', now, 'end', now + window, 'n', 1, 's', 0,
    'who', ARGV[o + 4], 'res', ARGV[o + 6], 'meta', ARGV[o + 8])
  redis.call('PEXPIRE', KEYS[2], window)
  redis.call('ZREM', KEYS[3], ARGV[5])
elseif bound == 'flush' then
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[3], ARGV[5])
end
local trimmed = 0
if trim ~= '' then trimmed = redis.call('XTRIM', KEYS[1], 'MINID', trim) end
return { 'ok', now, trimmed }
