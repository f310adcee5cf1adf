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

  park(id, jk, score, blocker)
      Park a job that is in no state set (the caller took it out of wait, or it is new).
  unpark(blocker, n) -> moved
      Move the first n (clamped to 0..UNPARK_MAX) jobs parked behind `blocker` back to
      wait at their positions (st = waiting), and wake idle workers. A job whose record
      was deleted meanwhile goes to wait as it is: claim dead-letters a record of it.
  forget_parked(id, jk)       take a parked job out of its blocker (remove, cancel)
  drop_parked(limit) -> n     delete up to `limit` parked jobs and their records (drain,
                              clear), with their blockers' timers
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
local UNPARK_MAX = BATCH_MAX

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
  local left = redis.call('ZCARD', PARKED_PREFIX .. blocker)
  if left > 0 then
    redis.call('ZADD', K_PARKED, left, blocker)
  else
    redis.call('ZREM', K_PARKED, blocker)
  end
  add_parked_total(delta)
end

local function park(id, jk, score, blocker)
  redis.call('ZADD', PARKED_PREFIX .. blocker, score, id)
  redis.call('HSET', jk, 'st', 'pending', 'pk', blocker)
  count_parked(blocker, 1)
end

local function unpark(blocker, n)
  n = arg_int(n, 1, 0, UNPARK_MAX)
  if n == 0 then return 0 end
  local pk = PARKED_PREFIX .. blocker
  local got = redis.call('ZRANGE', pk, 0, n - 1, 'WITHSCORES')
  if #got == 0 then return 0 end
  local ids, pairs_ = {}, {}
  for i = 1, #got, 2 do
    local id = got[i]
    ids[#ids + 1] = id
    pairs_[#pairs_ + 1] = got[i + 1]
    pairs_[#pairs_ + 1] = id
    local jk = job_key(id)
    if key_type(jk) == 'hash' then
      redis.call('HSET', jk, 'st', 'waiting')
      redis.call('HDEL', jk, 'pk')
    end
  end
  zadd_pairs(K_WAIT, pairs_)
  zrem_all(pk, ids)
  count_parked(blocker, -#ids)
  wake()
  return #ids
end

local function forget_parked(id, jk)
  local blocker = redis.call('HGET', jk, 'pk')
  if blocker and redis.call('ZREM', PARKED_PREFIX .. blocker, id) == 1 then
    count_parked(blocker, -1)
  end
end

local function drop_parked(limit)
  local removed, rounds = 0, 0
  -- Each round deletes jobs or forgets an empty blocker: at most `limit` rounds.
  while removed < limit and rounds < limit do
    rounds = rounds + 1
    local blockers = redis.call('ZRANGE', K_PARKED, 0, 0)
    if #blockers == 0 then break end
    local blocker = blockers[1]
    local pk = PARKED_PREFIX .. blocker
    local ids = redis.call('ZRANGE', pk, 0, limit - removed - 1)
    for i = 1, #ids do delete_job(ids[i]) end
    zrem_all(pk, ids)
    removed = removed + #ids
    count_parked(blocker, -#ids)
    if redis.call('EXISTS', pk) == 0 then
      -- Emptied: its timer, if it had one, has nothing left to bring back.
      redis.call('ZREM', K_PARK_TIMERS, blocker)
      redis.call('HDEL', K_PARK_RULES, blocker)
    end
  end
  return removed
end
