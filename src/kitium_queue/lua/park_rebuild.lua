--[[
  park_rebuild.lua — rebuild parked sets from the job records (parking.rebuild_parked).

  A blocker's set (<prefix>parked:<blocker>) overwritten with another type or deleted
  outside kitium-queue leaves its jobs pending (st = 'pending', pk = the blocker) in no
  set: nothing would release them. The Python side walks the job records with SCAN and
  sends them here a page at a time, then the blockers, then asks for the total; each call
  is atomic, bounded (at most BATCH_MAX ids or blockers) and checks the keys it writes
  before its first write.

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]  phase: 'index' | 'jobs' | 'count' | 'total'
  ARGV[5]  '1': dry run -- nothing is written, the reply says what would be done
  ARGV[6]  '1': release the jobs given back to wait (jobs phase), as unpark does
  ARGV[7]  only jobs parked behind this blocker ('' = any; jobs phase)
  ARGV[8..] job ids (jobs phase) or blockers (count phase), at most BATCH_MAX

  Phases and what each returns:
    index  the parked index holding another type is deleted (each blocker is listed
           again by the count phase). Returns {replaced: 0 | 1}.
    jobs   for each id whose record is a hash with st = 'pending' and a blocker pk
           (matching ARGV[7]): nothing when its blocker's set lists it; else, when it
           is in no state set, it is put back in that set at its wait score (from its
           'p' and 'q', as push_wait computes it), the set's count in the index and the
           total following (count_parked); with ARGV[6] it then goes to wait through
           unpark_pairs, so claim's admission judges it again. A set holding another
           type is deleted first (only then). A pending job found in a state set is
           left alone (skipped). Returns {pending, restored, released, skipped,
           {damaged keys}, {blockers of the pending jobs}, {blockers given jobs}}.
    count  each blocker's count in the index set to its set's size (removed at 0); a
           set holding another type is deleted first. Returns {fixed, {damaged keys}}.
    total  meta 'parked' set to the sum of the index (read by distinct count: a few
           commands per distinct count, not per blocker). Returns {before, after};
           after = -1 when the index holds more than TOTAL_STEPS distinct counts
           (nothing written).
  A key made sound has its 'damaged:<key>' report removed from slot-errors.
  Damaged keys: KQ_DAMAGED_KEY <found> <expected> <key> when meta (or, releasing, wait
  or the marker) holds another type; nothing was written.
]]
--@include lib_parking
--@include lib_listed

local PHASE = ARGV[4]
local DRY = ARGV[5] == '1'
local RELEASE = ARGV[6] == '1'
local ONLY = ARGV[7] or ''
local FIRST = 8
local TOTAL_STEPS = 10000

if #ARGV - FIRST + 1 > BATCH_MAX then
  return bad_arg('park_rebuild', 'at most ' .. BATCH_MAX .. ' ids or blockers per call, got ' ..
    (#ARGV - FIRST + 1))
end
if PHASE ~= 'index' and PHASE ~= 'jobs' and PHASE ~= 'count' and PHASE ~= 'total' then
  return bad_arg('park_rebuild', 'unknown phase ' .. tostring(PHASE))
end
if not DRY then
  local damaged
  if PHASE == 'jobs' and RELEASE then damaged = check_keys(7, 1, 9) else damaged = check_keys(7) end
  if damaged then return damaged end
end

-- A key of the wrong type, made sound (deleted) unless DRY; listed in `out`.
local function replace(key, out)
  out[#out + 1] = key
  if not DRY then
    redis.call('UNLINK', key)  -- any type and size: freed in the background
    redis.pcall('HDEL', PARK_REPORTS, 'damaged:' .. key)
  end
end

local function is_sound(t)
  return t == 'zset' or t == 'none'
end


-- The index, read by the count and total phases: holding another type, it refuses the
-- call (the index phase deletes it first), or in a dry run reads as empty.
local INDEX_TYPE = redis.call('TYPE', K_PARKED)['ok']
if PHASE ~= 'index' and PHASE ~= 'jobs' and not is_sound(INDEX_TYPE) then
  if not DRY then return damaged_reply(K_PARKED, INDEX_TYPE, 'zset') end
  if PHASE == 'total' then return { int(num(redis.call('HGET', K_META, 'parked'))), -1 } end
end

if PHASE == 'index' then
  if is_sound(INDEX_TYPE) then return { 0 } end
  replace(K_PARKED, {})
  return { 1 }
end

if PHASE == 'count' then
  local fixed, damaged = 0, {}
  for i = FIRST, #ARGV do
    local b = ARGV[i]
    local key = PARKED_PREFIX .. b
    local n = 0
    if is_sound(redis.call('TYPE', key)['ok']) then
      n = redis.call('ZCARD', key)
      if not DRY then redis.pcall('HDEL', PARK_REPORTS, 'damaged:' .. key) end
    else
      replace(key, damaged)
    end
    local cur = nil
    if is_sound(INDEX_TYPE) then cur = tonumber(redis.call('ZSCORE', K_PARKED, b)) end
    if n > 0 and cur ~= n then
      fixed = fixed + 1
      if not DRY then redis.call('ZADD', K_PARKED, n, b) end
    elseif n == 0 and cur then
      fixed = fixed + 1
      if not DRY then redis.call('ZREM', K_PARKED, b) end
    end
  end
  if not DRY then redis.pcall('HDEL', PARK_REPORTS, 'damaged:' .. K_PARKED) end
  return { fixed, damaged }
end

if PHASE == 'total' then
  local before = num(redis.call('HGET', K_META, 'parked'))
  local sum, low, steps = 0, '-inf', 0
  while true do
    local r = redis.call('ZRANGEBYSCORE', K_PARKED, low, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    if #r == 0 then break end
    steps = steps + 1
    if steps > TOTAL_STEPS then return { int(before), -1 } end
    local s = tonumber(r[2])
    if s > 0 then sum = sum + s * redis.call('ZCOUNT', K_PARKED, r[2], r[2]) end
    low = '(' .. r[2]
  end
  if not DRY then
    if sum > 0 then
      redis.call('HSET', K_META, 'parked', int(sum))
    else
      redis.call('HDEL', K_META, 'parked')
    end
  end
  return { int(before), int(sum) }
end

-- PHASE == 'jobs'
local pending, restored, released, skipped = 0, 0, 0, 0
local damaged, seen, given = {}, {}, {}
local kind, back, order = {}, {}, {}

-- 'zset' (sound, it exists), 'none' (missing), or 'replaced' (another type: deleted,
-- or with DRY to be deleted), once per blocker and call.
local function set_kind(b)
  local k = kind[b]
  if k then return k end
  local key = PARKED_PREFIX .. b
  k = redis.call('TYPE', key)['ok']
  if not is_sound(k) then
    replace(key, damaged)
    k = 'replaced'
  end
  kind[b] = k
  seen[#seen + 1] = b
  return k
end

for i = FIRST, #ARGV do
  local id = ARGV[i]
  local jk = job_key(id)
  if key_type(jk) == 'hash' then
    local f = redis.call('HMGET', jk, 'st', 'pk', 'p', 'q')
    local b = f[2]
    if f[1] == 'pending' and b and b ~= '' and (ONLY == '' or b == ONLY) then
      pending = pending + 1
      local k = set_kind(b)
      if not (k == 'zset' and redis.call('ZSCORE', PARKED_PREFIX .. b, id)) then
        if in_state_set(id) then
          skipped = skipped + 1
        else
          restored = restored + 1
          if not back[b] then
            back[b] = {}
            order[#order + 1] = b
          end
          local pairs_ = back[b]
          pairs_[#pairs_ + 1] = id
          pairs_[#pairs_ + 1] = int(wait_score(arg_int(f[3], 0, 0, 65535), num(f[4])))
        end
      end
    end
  end
end

for i = 1, #order do
  local b = order[i]
  local got = back[b]
  given[#given + 1] = b
  if not DRY then
    local scored = {}
    for j = 1, #got, 2 do
      scored[#scored + 1] = got[j + 1]
      scored[#scored + 1] = got[j]
    end
    zadd_pairs(PARKED_PREFIX .. b, scored)
    count_parked(b, #got / 2)
    if RELEASE then released = released + unpark_pairs(b, got) end
  elseif RELEASE then
    released = released + #got / 2
  end
end
return { pending, restored, released, skipped, damaged, seen, given }
