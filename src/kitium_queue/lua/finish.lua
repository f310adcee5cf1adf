--[[
  finish.lua — record the outcomes of leased jobs (active → completed | delayed |
  waiting | failed | dlq), many per call. Fenced: an outcome is recorded only if the job
  is still active under the caller's lease token.

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]   dlq enabled ('1' | '0'), or '1 <max jobs> <max age ms>' (-1: no limit):
            the DLQ is trimmed like a finished set after a job joins it
  ARGV[5..] 9 fields per outcome:
            id, token, kind, payload, traceback, delay ms, keep count, keep age ms, meta
    kind  'C' completed: payload = encoded result; keep count/age = remove_on_complete
          'R' retry: payload = error message; delay ms before the next attempt
          'F' final failure: payload = error message → dlq (or failed if dlq disabled);
              keep count/age = remove_on_fail (applies to the failed set only)
          'D' defer: back after delay ms without spending an attempt (rate limited,
              "retry later"); payload = reason
          'H' hand back: unstarted or interrupted by shutdown; back to wait at its
              original position without spending an attempt
    keep count -1 = keep all, 0 = remove at once; keep age -1 = no age limit
    meta  'C', 'F': the run's context (Job.run_context: what the runs that follow this
               one link to), '' = none; handed to the `release` slot; 'C' stores it
               as 'm' too
          'D': a hold to set for delay ms (the processor raised RateLimited): 'hold'
               holds the whole queue (claim.lua), 'hold:<key>' one rate-limit key
               (flow control); '' = none. A longer hold already set is kept.

  Arguments are checked before the first write: a call with a malformed outcome (a kind
  other than C R F D H, a delay / keep count / keep age that is not a number, NaN
  included, or a field count that is not a multiple of 9) is refused whole with a
  'KQ_BAD_ARGUMENT' error reply and writes nothing. Numbers are then clamped: delay to
  0..MAX_DELAY_MS (limits.py; +inf gives the maximum, negatives 0), keep count and keep
  age to -1..2^53; fractions are cut. So no SET PX, ZADD or XADD below can be refused
  half way through the call. Ids and tokens need no check: any string is fenced (a
  forged or empty token is 'lease-lost', an unknown id 'removed').

  Damaged keys: when a key of the layout the call would write holds another type, the
  reply is the error KQ_DAMAGED_KEY <found> <expected> <key> and nothing was written.

  Returns one status per outcome, in order: 'ok' | 'lease-lost' | 'missing' | 'removed'
  | 'damaged' ('missing': the record is gone while the job was still in active --
  evicted or deleted by hand, counted in meta 'missing'; 'removed': the record and the
  active entry are both gone -- clear(force=True) or an erasure took the job out while
  it ran, nothing counted; 'damaged': the job key holds something other than a job
  hash; nothing is written)
  | 'cancelled' (an 'R', 'D' or 'H' outcome of a job cancel_job() flagged while it ran:
  recorded as an 'F' with the reason 'cancelled by cancel_job()' instead; a 'C' stays
  completed, since the run did its work).
  Events: job-completed | job-retrying | job-failed (+ job-dlq) | job-delayed | job-released.
  Slot: every job this call takes out of active passes the `release` slot once, before
  its transition is written, with outcome completed | retrying | failed | deferred |
  released (its kind), or 'removed' when its record was missing, and the run's context
  (meta of a 'C' or 'F' outcome, else nil); with no fragment in that slot, nothing of
  it is compiled in.
  Bounded: the client sends at most 500 outcomes per call.
]]
--@include lib_base
--@include lib_events
--@include lib_jobs
--@include lib_sets
--@include lib_retention
--@include slot_release

-- Retention counts and ages above this are as good as unlimited; exact in a double.
local MAX_KEEP = 9007199254740992
local KINDS = { C = true, R = true, F = true, D = true, H = true }
local CANCELLED = 'cancelled by cancel_job()'
--@if release
local RELEASED_AS = { C = 'completed', R = 'retrying', F = 'failed', D = 'deferred',
  H = 'released' }
--@end

local dlq_enabled = string.sub(ARGV[4], 1, 1) == '1'
local dlq_keep, dlq_age = -1, -1
if dlq_enabled and #ARGV[4] > 1 then
  local a, b = string.match(ARGV[4], '^1 (%-?%d+) (%-?%d+)$')
  dlq_keep, dlq_age = arg_int(a, -1, -1, MAX_KEEP), arg_int(b, -1, -1, MAX_KEEP)
end
local function bad_outcome(n, what)
  return bad_arg('finish', 'outcome ' .. n .. ' of the call: ' .. what)
end
if (#ARGV - 4) % 9 ~= 0 then
  return bad_arg('finish', (#ARGV - 4) .. ' outcome fields, not 9 per outcome')
end
-- Check and clamp every outcome before the first write (header). Pure Lua, no command:
-- a few microseconds per call on the hot path.
local delays, counts, ages = {}, {}, {}
local kinds = {}
for b = 5, #ARGV, 9 do
  local n = (b - 5) / 9 + 1
  if not KINDS[ARGV[b + 2]] then return bad_outcome(n, 'unknown kind') end
  kinds[ARGV[b + 2]] = true
  local delay = arg_int(ARGV[b + 5], nil, 0, MAX_DELAY_MS)
  local keep_count = arg_int(ARGV[b + 6], nil, -1, MAX_KEEP)
  local keep_age = arg_int(ARGV[b + 7], nil, -1, MAX_KEEP)
  if delay == nil then return bad_outcome(n, 'delay is not a number') end
  if keep_count == nil or keep_age == nil then
    return bad_outcome(n, 'keep count or keep age is not a number')
  end
  delays[b], counts[b], ages[b] = delay, keep_count, keep_age
end

-- The keys the call's kinds of outcome write (check_keys, lib_base.lua): active and
-- events, plus completed for 'C', wait and marker for 'R' 'D' 'H', delayed for 'R' 'D',
-- dlq or failed for 'F' -- and for 'R' 'D' 'H' too: one of a job cancel_job() flagged
-- becomes a final failure (below). A few commands per call, none per outcome.
local check = { 2, 8 }
if kinds.C then check[#check + 1] = 4 end
if kinds.R or kinds.D or kinds.H then check[#check + 1] = 1; check[#check + 1] = 9 end
if kinds.R or kinds.D then check[#check + 1] = 3 end
if kinds.F or kinds.R or kinds.D or kinds.H then check[#check + 1] = dlq_enabled and 6 or 5 end
local damaged = check_keys(unpack(check))
if damaged then return damaged end

local res = {}
local woke = false
-- Retention is applied once per distinct policy at the end of the call, not per job;
-- removals from active and additions to completed are batched the same way.
local trims = {}
local unleased, completed = {}, {}
local last_kc, last_ka = nil, nil
for b = 5, #ARGV, 9 do
  local id, token, kind = ARGV[b], ARGV[b + 1], ARGV[b + 2]
  local payload, tb, delay = ARGV[b + 3], ARGV[b + 4], delays[b]
  local keep_count, keep_age, meta = counts[b], ages[b], ARGV[b + 8]
  local jk = job_key(id)
  -- pcall: a job key holding another type (overwritten by hand) would fail HMGET with
  -- WRONGTYPE after the outcomes before it were written; report it instead.
  -- Fields the release fragments declared (ScriptRegistry.add_slot(fields=)) are read
  -- in the same HMGET, after these three, and handed to them.
  local f = redis.pcall('HMGET', jk, 'lt', 'st', 'e'--[[@release_fields]])
  if f.err then
    res[#res + 1] = 'damaged'
  elseif not f[2] then
    -- Still leased: the record went behind the queue's back (remove_job refuses a
    -- running job, clear() takes it out of active), evicted or deleted: counted.
    if redis.call('ZREM', K_ACTIVE, id) == 1 then
      res[#res + 1] = 'missing'
      count_missing()
--@if release
      release_slot(id, jk, 'removed')
--@end
    else
      -- Out of active too: taken out by a call of the queue's own (clear(force=True),
      -- an erasure), not evicted.
      res[#res + 1] = 'removed'
    end
  elseif f[1] ~= token or f[2] ~= 'active' then
    res[#res + 1] = 'lease-lost'
  else
    local status = 'ok'
    if kind ~= 'C' and kind ~= 'F' and redis.call('HEXISTS', jk, 'cx') == 1 then
      -- cancel_job() flagged the run, and it ended (raised, retry later, handed back)
      -- before a renewal told its worker: failed for good, as a cancel promises.
      kind, payload, tb, meta, status = 'F', CANCELLED, '', '', 'cancelled'
    end
    unleased[#unleased + 1] = id
    redis.call('HDEL', jk, 'lt', 'cx')
--@if release
    local ctx = nil
    if (kind == 'C' or kind == 'F') and meta ~= '' then ctx = meta end
--@end
    --@slot release(id, jk, RELEASED_AS[kind], payload, ctx, f)
    if kind == 'C' then
      if keep_count == 0 then
        delete_job(id)
      else
        -- The error of an earlier attempt is history once the job succeeds: keep it as
        -- the last error ('le'), not as the reason of a failure ('e', 'tb').
        local err = f[3]
        if err then
          redis.call('HSET', jk, 'le', err)
          redis.call('HDEL', jk, 'e', 'tb')
        end
        redis.call('HSET', jk, 'st', 'completed', 'f', NOW_S, 'r', payload)
        if meta ~= '' then redis.call('HSET', jk, 'm', meta) end
        completed[#completed + 1] = id
        if keep_count ~= last_kc or keep_age ~= last_ka then
          -- Outcomes of one call nearly always share a policy: build its key once.
          last_kc, last_ka = keep_count, keep_age
          trims[K_COMPLETED .. '|' .. keep_count .. '|' .. keep_age] = { K_COMPLETED, keep_count, keep_age }
        end
      end
      emit('job-completed', id)
    elseif kind == 'R' then
      local delay_s = int(delay)
      redis.call('HSET', jk, 'e', payload, 'tb', tb)
      if delay > 0 then
        push_delayed(jk, id, NOW + delay)
      else
        push_wait(jk, id)
        woke = true
      end
      emit('job-retrying', id, 'delay', delay_s, 'reason', stream_reason(payload))
    elseif kind == 'F' then
      if dlq_enabled then
        dead_letter(jk, id, true, payload, tb)
        if dlq_keep >= 0 or dlq_age >= 0 then
          trims[K_DLQ] = { K_DLQ, dlq_keep, dlq_age }
        end
      else
        dead_letter(jk, id, false, payload, tb)
        if keep_count == 0 then
          redis.call('ZREM', K_FAILED, id)
          delete_job(id)
        else
          trims[K_FAILED .. '|' .. keep_count .. '|' .. keep_age] = { K_FAILED, keep_count, keep_age }
        end
      end
    elseif kind == 'D' then
      local delay_s = int(delay)
      redis.call('HSET', jk, 'a', int(math.max(num(redis.call('HGET', jk, 'a')) - 1, 0)))
      if delay > 0 then
        push_delayed(jk, id, NOW + delay)
      else
        push_wait(jk, id)
        woke = true
      end
      if delay > 0 and (meta == 'hold' or string.sub(meta, 1, 5) == 'hold:') then
        local hk = PREFIX .. meta
        -- delay_s: digits, as SET PX needs (a Lua number would be sent as "1e+17").
        if redis.call('PTTL', hk) < delay then redis.call('SET', hk, '1', 'PX', delay_s) end
      end
      emit('job-delayed', id, 'delay', delay_s, 'reason', stream_reason(payload))
    else -- 'H'
      redis.call('HSET', jk, 'a', int(math.max(num(redis.call('HGET', jk, 'a')) - 1, 0)))
      push_wait(jk, id)
      woke = true
      emit('job-released', id)
    end
    res[#res + 1] = status
  end
end
zrem_all(K_ACTIVE, unleased)
zadd_all(K_COMPLETED, NOW_S, completed)
for _, t in pairs(trims) do trim_finished(t[1], t[2], t[3]) end
if woke then wake() end
return res
