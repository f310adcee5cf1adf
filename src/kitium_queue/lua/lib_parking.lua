--[[
  lib_parking.lua — fragment: parked jobs. A job that cannot run now (its concurrency
  key is at its cap, its group's turn has not come, its dependencies are unfinished...)
  waits outside `wait`, behind what blocks it, and goes back to `wait` in the same
  atomic step that removes the blocker. Claim never scans parked jobs, so any number of
  them delays no eligible job.

  Keys (built from PREFIX: the queue's hash tag, so cluster-safe):
    <prefix>parked:<blocker>  ZSET  the jobs parked behind <blocker>, score = their wait
                                    score (they go back to wait in the same order)
    <prefix>parked            ZSET  index: blocker -> how many jobs it holds
    <prefix>park:timers       ZSET  time-based blockers: blocker -> when to unpark (ms)
    <prefix>park:rules        HASH  blocker -> "<n> <every> <due>" of its timer
    meta field 'parked'             how many jobs are parked in all
  A parked job's hash: st = 'pending', pk = its blocker. Blockers are non-empty strings,
  named by the feature that parks (flow control: 'cc:<key>', 'rl:<key>').

  park(id, jk, score, blocker) -> parked
      Park a job that is in no state set (the caller took it out of wait, or it is new),
      or in wait (claim). False when `blocker`'s set is damaged: the job is in wait.
  unpark(blocker, n, fresh, ids) -> moved
      Move the first n (clamped to 0..UNPARK_MAX) jobs parked behind `blocker` back to
      wait (st = waiting), and wake idle workers. By default each goes back to its
      position (its parked score). With `fresh`, each takes a new place at the back of
      its priority band (the band its parked score is in), as if it had just been added
      (a new sequence number; its 'q' field, its enqueue order, is kept): a feature that
      hands turns out in rotation (FIFO groups, tenants' lanes) uses it so a long-parked
      job does not jump ahead of work that became ready meanwhile. A job whose record
      was deleted meanwhile goes to wait as it is: claim dead-letters a record of it.
      `ids`, when given (a table), receives the ids moved, in order.
  unpark_pairs(blocker, got, fresh, ids) -> moved
      unpark's moves for the given jobs (`got`: id, parked score, ...), wherever they
      are in the set (the repair, park_rebuild.lua, releases the jobs it gave back).
  forget_parked(id, jk)       take a parked job out of its blocker
  remove_unstarted(id, jk, before_delete)
                              delete a job that has not started (waiting, delayed or
                              parked): out of its set or blocker, then the `release` slot
                              (outcome 'removed') when a feature filled it, then its
                              records. Every removal of an unfinished job goes through it
                              (remove, cancel, and features that remove jobs from inside
                              a fragment or script: a workflow's cancelled steps), so the
                              features' release fragments see each one. The caller emits
                              the event. A script that calls it includes `slot_release`.
                              `before_delete(id, jk)`, when given, runs once the release
                              fragments ran (the job is counted nowhere any more) and
                              before the record goes: a feature that may re-create the
                              job later keeps what it needs of the record there.
  drop_parked(limit, on_delete) -> n
                              delete up to `limit` parked jobs and their records (drain,
                              clear), with their blockers' timers; on_delete(id, jk,
                              'removed'), when given, runs for each job first (drain
                              passes the `release` slot)
  Damaged keys: a parking key overwritten outside kitium-queue with another type (a
  blocker's set, the index, the timers, the rules) never fails a script: the command on
  it is skipped, nothing of it written, and park_damaged records it once per call in
  <prefix>slot-errors (field 'damaged:<key>', the KQ_DAMAGED_KEY text of damaged_key in
  lib_base.lua and the repair): a job that cannot be parked stays in (or goes to) wait,
  a damaged blocker unparks nothing, a damaged index is left as it is (rebuilt from the
  blockers' sets as they change once it is deleted). No command is added to a call
  while the keys are sound (pcall in place of call). The jobs a damaged (or deleted)
  blocker's set held stay pending, with pk = the blocker: park_rebuild.lua
  (parking.rebuild_parked) gives them back from their records.
  Timers (park_timer, fire_timers, next_timer) are in lib_park_timers.lua. Every function
  is bounded and sends lists to Redis in chunks (lib_sets.lua). Only commands of the
  core ACL list are used (docs/RELIABILITY.md), so a queue whose features park jobs
  needs no other.
]]
--@include lib_base
--@include lib_events
--@include lib_jobs
--@include lib_sets

local K_PARKED = PREFIX .. 'parked'
local PARKED_PREFIX = PREFIX .. 'parked:'
local K_PARK_TIMERS = PREFIX .. 'park:timers'
local K_PARK_RULES = PREFIX .. 'park:rules'
-- Where damaged parking keys are reported: the slot-errors hash (parking.slot_errors).
local PARK_REPORTS = PREFIX .. 'slot-errors'
local UNPARK_MAX = BATCH_MAX

-- The repair of each kind of parking key found damaged.
local PARK_FIX = {
  zset = 'repair it with parking.rebuild_parked(queue) (CLI: kitium-queue parked rebuild ' ..
    'APP): it replaces the set and gives its jobs (pending, pk = the blocker) back from ' ..
    'their records; to delete it by hand strands those jobs; other jobs flow meanwhile',
  index = 'delete it, or repair it with parking.rebuild_parked(queue) (CLI: kitium-queue ' ..
    'parked rebuild APP), which recounts every blocker; parked jobs still come back meanwhile',
  timers = 'delete it: features arm their timers again; other jobs flow meanwhile',
  rules = 'delete it: timers then unpark as many jobs as one call may',
}
local PARK_DAMAGE_SEEN = {}

-- Records `key` (expected: a Redis type) found holding another type, once per call, in
-- slot-errors; the text is damaged_reply's (lib_base.lua),
-- then the repair: PARK_FIX[fix], or `fix` itself (a feature's key: tenancy).
local function park_damaged(key, expected, fix)
  if PARK_DAMAGE_SEEN[key] then return end
  PARK_DAMAGE_SEEN[key] = true
  local reply = damaged_reply(key, redis.call('TYPE', key)['ok'], expected)
  -- pcall: a damaged slot-errors hash must not fail the call either (health_check names it).
  redis.pcall('HSET', PARK_REPORTS, 'damaged:' .. key, NOW_S .. ' ' .. reply.err ..
    ': skipped, nothing of it written; ' .. (PARK_FIX[fix] or fix))
end

-- redis.call of a command on parking key `key` (a zset, or a hash for 'rules'): its
-- reply, or nil when the key holds another type (recorded, nothing written). Any other
-- error is raised as redis.call would.
local function park_call(fix, cmd, key, ...)
  local r = redis.pcall(cmd, key, ...)
  if type(r) == 'table' and r.err then
    -- tostring: the memory:// backend's error replies are not Lua strings.
    if not string.find(tostring(r.err), 'WRONGTYPE', 1, true) then error(r) end
    local expected = 'zset'
    if fix == 'rules' then expected = 'hash' end
    park_damaged(key, expected, fix)
    return nil
  end
  return r
end

-- The total of parked jobs, in meta. HSET of a computed value rather than HINCRBY: a
-- damaged total must not fail a script after its writes.
local function add_parked_total(delta)
  local total = num(redis.call('HGET', K_META, 'parked')) + delta
  if total > 0 then
    redis.call('HSET', K_META, 'parked', int(total))
  else
    redis.call('HDEL', K_META, 'parked')
  end
end

-- After `blocker`'s set changed by `delta` jobs: its count in the index (its set's own
-- size, so the index cannot drift) and the total.
local function count_parked(blocker, delta)
  local left = park_call('zset', 'ZCARD', PARKED_PREFIX .. blocker) or 0
  if left > 0 then
    park_call('index', 'ZADD', K_PARKED, left, blocker)
  else
    park_call('index', 'ZREM', K_PARKED, blocker)
  end
  add_parked_total(delta)
end

-- Returns true when parked. A blocker whose set holds another type (damaged) parks
-- nothing: the job is put in wait (NX: where it is when it sits there), so none is left
-- in no set, and false is returned.
local function park(id, jk, score, blocker)
  if not park_call('zset', 'ZADD', PARKED_PREFIX .. blocker, score, id) then
    redis.call('ZADD', K_WAIT, 'NX', score, id)
    return false
  end
  redis.call('HSET', jk, 'st', 'pending', 'pk', blocker)
  count_parked(blocker, 1)
  return true
end

-- A new wait score with sequence number `seq` for a job parked at wait score `score`
-- going back to wait with `fresh` (see unpark): the back of the priority band `score`
-- is in (the front of it for a LIFO job, which sits in the band's lower half). Parked
-- scores are wait scores (lib_jobs.lua wait_score), so band and LIFO-ness are read from
-- the score itself, without reading the job's record.
local function fresh_score(score, seq)
  local s = num(score)
  local band = math.floor(s / BAND)
  if s - band * BAND < HALF then seq = -seq end
  return int(wait_score(arg_int(65535 - band, 0, 0, 65535), seq))
end

-- unpark's moves, for the jobs `got` (id, parked score, id, score, ...: at most
-- UNPARK_MAX jobs) parked behind `blocker`. The repair (park_rebuild.lua) releases the
-- jobs it gave back this way.
local function unpark_pairs(blocker, got, fresh, moved)
  local pk = PARKED_PREFIX .. blocker
  local ids, pairs_ = {}, {}
  -- The fresh sequence numbers of this call, taken at once.
  local seq = 0
  if fresh then seq = redis.call('INCRBY', K_ID, #got / 2) - #got / 2 end
  for i = 1, #got, 2 do
    local id = got[i]
    local score = got[i + 1]
    ids[#ids + 1] = id
    if moved then moved[#moved + 1] = id end
    local jk = job_key(id)
    if key_type(jk) == 'hash' then
      if fresh then
        seq = seq + 1
        score = fresh_score(score, seq)
      end
      redis.call('HSET', jk, 'st', 'waiting')
      redis.call('HDEL', jk, 'pk')
    end
    pairs_[#pairs_ + 1] = score
    pairs_[#pairs_ + 1] = id
  end
  zadd_pairs(K_WAIT, pairs_)
  zrem_all(pk, ids)
  count_parked(blocker, -#ids)
  wake()
  return #ids
end

local function unpark(blocker, n, fresh, moved)
  n = arg_int(n, 1, 0, UNPARK_MAX)
  if n == 0 then return 0 end
  local got = park_call('zset', 'ZRANGE', PARKED_PREFIX .. blocker, 0, n - 1, 'WITHSCORES')
  if not got or #got == 0 then return 0 end
  return unpark_pairs(blocker, got, fresh, moved)
end

local function forget_parked(id, jk)
  local blocker = redis.call('HGET', jk, 'pk')
  if blocker and park_call('zset', 'ZREM', PARKED_PREFIX .. blocker, id) == 1 then
    count_parked(blocker, -1)
  end
end

-- The composed `release` slot (slots.py assigns it when a feature filled the slot and
-- the script includes slot_release): nil otherwise. Declared here, before the slot's
-- fragments, so that a fragment may remove jobs through remove_unstarted too.
local release_hook = nil

local function remove_unstarted(id, jk, before_delete)
  redis.call('ZREM', K_WAIT, id)
  redis.call('ZREM', K_DELAYED, id)
  forget_parked(id, jk)
  -- Out of every set first: a release fragment that unparks cannot move it to wait.
  if release_hook then release_hook(id, jk, 'removed') end
  if before_delete then before_delete(id, jk) end
  delete_job(id)
end

local function drop_parked(limit, on_delete)
  local removed, rounds = 0, 0
  -- Each round deletes jobs or forgets an empty blocker: at most `limit` rounds.
  while removed < limit and rounds < limit do
    rounds = rounds + 1
    local blockers = park_call('index', 'ZRANGE', K_PARKED, 0, 0)
    if not blockers or #blockers == 0 then break end
    local blocker = blockers[1]
    local pk = PARKED_PREFIX .. blocker
    -- A damaged blocker (recorded) is taken out of the index: the next one is served.
    local ids = park_call('zset', 'ZRANGE', pk, 0, limit - removed - 1) or {}
    -- Out of their blocker first, so an on_delete that unparks cannot move them to wait.
    zrem_all(pk, ids)
    removed = removed + #ids
    count_parked(blocker, -#ids)
    if on_delete then
      for i = 1, #ids do on_delete(ids[i], job_key(ids[i]), 'removed') end
    end
    delete_jobs(ids)
    if redis.call('EXISTS', pk) == 0 then
      -- Emptied: its timer, if it had one, has nothing left to bring back.
      park_call('timers', 'ZREM', K_PARK_TIMERS, blocker)
      park_call('rules', 'HDEL', K_PARK_RULES, blocker)
    end
  end
  return removed
end
