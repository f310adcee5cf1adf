--[[
  finish.lua — record the outcomes of leased jobs (active → completed | delayed |
  waiting | failed | dlq), many per call. Fenced: an outcome is recorded only if the job
  is still active under the caller's lease token.

  KEYS: the shared layout (common.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]   dlq enabled ('1' | '0')
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
    meta  'C': free-form string stored as 'm' on completion (duration, worker), '' = none
          'D': a hold to set for delay ms (the processor raised RateLimited): 'hold'
               holds the whole queue (claim.lua), 'hold:<key>' one rate-limit key
               (flow control); '' = none. A longer hold already set is kept.

  Returns one status per outcome, in order: 'ok' | 'lease-lost' | 'missing'.
  Events: job-completed | job-retrying | job-failed (+ job-dlq) | job-delayed | job-released.
  Bounded: the client sends at most 500 outcomes per call.
]]
--@include common

local dlq_enabled = ARGV[4] == '1'
local res = {}
local woke = false
-- Retention is applied once per distinct policy at the end of the call, not per job;
-- removals from active and additions to completed are batched the same way.
local trims = {}
local unleased, completed = {}, {}
local last_kc, last_ka = nil, nil
for b = 5, #ARGV, 9 do
  local id, token, kind = ARGV[b], ARGV[b + 1], ARGV[b + 2]
  local payload, tb, delay = ARGV[b + 3], ARGV[b + 4], tonumber(ARGV[b + 5])
  local keep_count, keep_age, meta = tonumber(ARGV[b + 6]), tonumber(ARGV[b + 7]), ARGV[b + 8]
  local jk = job_key(id)
  local f = redis.call('HMGET', jk, 'lt', 'st', 'e')
  if not f[2] then
    res[#res + 1] = 'missing'
    redis.call('ZREM', K_ACTIVE, id)
  elseif f[1] ~= token or f[2] ~= 'active' then
    res[#res + 1] = 'lease-lost'
  else
    unleased[#unleased + 1] = id
    redis.call('HDEL', jk, 'lt', 'cx')
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
      redis.call('HSET', jk, 'e', payload, 'tb', tb)
      if delay > 0 then
        push_delayed(jk, id, NOW + delay)
      else
        push_wait(jk, id)
        woke = true
      end
      emit('job-retrying', id, 'delay', delay, 'reason', payload)
    elseif kind == 'F' then
      if dlq_enabled then
        dead_letter(jk, id, true, payload, tb)
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
      redis.call('HSET', jk, 'a', int(math.max(num(redis.call('HGET', jk, 'a')) - 1, 0)))
      if delay > 0 then
        push_delayed(jk, id, NOW + delay)
      else
        push_wait(jk, id)
        woke = true
      end
      if delay > 0 and (meta == 'hold' or string.sub(meta, 1, 5) == 'hold:') then
        local hk = PREFIX .. meta
        if redis.call('PTTL', hk) < delay then redis.call('SET', hk, '1', 'PX', delay) end
      end
      emit('job-delayed', id, 'delay', delay, 'reason', payload)
    else -- 'H'
      redis.call('HSET', jk, 'a', int(math.max(num(redis.call('HGET', jk, 'a')) - 1, 0)))
      push_wait(jk, id)
      woke = true
      emit('job-released', id)
    end
    res[#res + 1] = 'ok'
  end
end
zrem_all(K_ACTIVE, unleased)
zadd_all(K_COMPLETED, NOW_S, completed)
for _, t in pairs(trims) do trim_finished(t[1], t[2], t[3]) end
if woke then wake() end
return res
