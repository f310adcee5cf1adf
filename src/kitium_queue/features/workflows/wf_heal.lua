--[[
  wf_heal.lua — release the dependents of jobs that finished without passing this
  feature's release fragment (kitium_queue.features.workflows), for one page of blockers.

  A tracked job's dependents are released (or its on_failure policy applied) in the
  atomic step that records its end, by the release fragment. A process of the queue
  without the feature (JobChainManager not created there: an older worker during a
  rolling deploy) runs such a job and finishes it without that fragment, so its step
  stays open and its dependents wait for good, parked behind 'wp:<it>' or their own
  'wn:<id>'. For each blocker given, this checks the job(s) it waits for: one whose step
  is open (pending or ready) while its record says it finished (completed, failed, dlq)
  or is gone gets what the release fragment would have given it (step_ended,
  prelude.lua): completed with its stored result and run context; failed with its error;
  gone as removed before it finished (what finish.lua hands the slot for a record gone).

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]   jobs checked in this call, clamped to 1..MAX_PARENTS: the blockers after
            the one that used the last check are left for the next call
  ARGV[5..] blockers of the parked index: 'wp:<parent id>' or 'wn:<job id>' (others
            are passed over)
  Returns { blockers done, jobs whose end was applied, dependents made ready }. A job
  whose records are damaged by hand (another type) is skipped; KQ_DAMAGED_KEY (nothing
  written) when a key of the layout it may write is damaged.
]]
--@include lib_base
--@include lib_events
--@include lib_jobs
--@include lib_parking
--@include lib_park_timers
--@include slot_release
@PRELUDE@

local budget = arg_int(ARGV[4], 1000, 1, MAX_PARENTS)
-- The layout keys the releases write (wait, delayed, meta, events, marker), checked
-- before the first write: a damaged one fails the call whole, never half way.
local bad = check_keys(1, 3, 7, 8, 9)
if bad then return bad end

-- How job `p` ended when its step is still open although it finished: 'completed' |
-- 'failed' | 'removed', its payload and run context; nil when there is nothing to do
-- (its step is closed, it has not finished, or a record of it is damaged).
local function missed_end(p)
  local dk = DEP .. p
  if key_type(dk) ~= 'hash' then return nil end
  local st = redis.call('HGET', dk, 'st')
  if not st or TERMINAL[st] then return nil end
  local jk = job_key(p)
  local t = key_type(jk)
  if t == 'none' then return 'removed' end
  if t ~= 'hash' then return nil end
  local f = redis.call('HMGET', jk, 'st', 'r', 'e', 'm')
  if f[1] == 'completed' then return 'completed', f[2], run_context(f[4]) end
  if f[1] == 'failed' or f[1] == 'dlq' then return 'failed', f[3] end
  return nil
end

local applied, ready = 0, 0
local function heal(p)
  budget = budget - 1
  if type(p) ~= 'string' or p == '' then return end
  local outcome, payload, ctx = missed_end(p)
  if not outcome then return end
  applied = applied + 1
  ready = ready + step_ended(p, outcome, payload, ctx)
end

local done = 0
for i = 5, #ARGV do
  if budget <= 0 then break end
  local b = ARGV[i]
  local kind, id = string.sub(b, 1, 3), string.sub(b, 4)
  if id ~= '' and kind == 'wp:' then
    heal(id)
  elseif id ~= '' and kind == 'wn:' then
    -- Its parents (at most MAX_PARENTS): the unfinished ones it waits for are checked.
    local ps = redis.pcall('LRANGE', DEPP .. id, 0, MAX_PARENTS - 1)
    if not ps.err then
      for j = 1, #ps do heal(ps[j]) end
    end
  end
  done = done + 1
end
return { done, applied, ready }
