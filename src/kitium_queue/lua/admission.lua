--[[
  admission.lua — the admission step of claim.lua: admit(id, jk, opts, f) decides whether
  a waiting candidate may be handed out now.

  By default every waiting job is eligible, and claim calls nothing per candidate.
  Features that decide which job may run next (rate limits, concurrency caps, FIFO group
  turns, tenant quotas, open circuit breakers) fill the `admission` slot: at load time
  the checks they registered are composed into admit() (the generated admission_checks
  fragment; see kitium_queue.slots and ScriptRegistry.add_slot). A rejected candidate
  stays in wait, untouched, unless its check parks it.

  Checks talk back to claim through:
    admit_retry(t)        a rejected candidate may become eligible at time t (ms); claim's
                          wake_in covers the earliest such t, so idle workers wake up then
    admit_stop()          no further candidate can pass in this call (e.g. a global cap
                          is reached): claim stops scanning
    admit_park(blocker[, score])
                          park the rejected candidate behind `blocker` instead of leaving
                          it in wait (lib_parking.lua): it returns to wait when the
                          blocker is removed (unpark) or its timer is due (park_timer).
                          Parked at `score` when given (its place among the jobs of that
                          blocker, e.g. its enqueue order), else at its wait score
    admit_after(key, fn)  run fn() once claim has handed out this call's jobs and taken
                          them out of wait (before it decides on the wake-up): work that
                          puts jobs into wait (unpark) belongs there, because claim scans
                          wait by position and a job added in front of the scan would
                          shift it onto candidates it already examined. A key registered
                          again in the same call keeps one run (the latest fn), in the
                          order the keys were first registered; a fn that fails is
                          recorded in slot-errors like a fragment
]]
local ADMIT_RETRY_AT = nil
local ADMIT_STOP = false
local ADMIT_PARK = nil
local ADMIT_PARK_SCORE = nil
local ADMIT_AFTER, ADMIT_AFTER_KEYS = {}, {}

local function admit_retry(t)
  if ADMIT_RETRY_AT == nil or t < ADMIT_RETRY_AT then ADMIT_RETRY_AT = t end
end

local function admit_stop()
  ADMIT_STOP = true
end

local function admit_park(blocker, score)
  if type(blocker) == 'string' and blocker ~= '' then
    ADMIT_PARK = blocker
    -- Only a finite score Redis takes (|score| < 2^53): anything else parks at the wait score.
    score = tonumber(score)
    if score and score == score and score > -9007199254740992 and score < 9007199254740992 then
      ADMIT_PARK_SCORE = score
    else
      ADMIT_PARK_SCORE = nil
    end
  end
end

local function admit_after(key, fn)
  if ADMIT_AFTER[key] == nil then ADMIT_AFTER_KEYS[#ADMIT_AFTER_KEYS + 1] = key end
  ADMIT_AFTER[key] = fn
end

--@include admission_checks
--@if admission

local function run_admit_after()
  for i = 1, #ADMIT_AFTER_KEYS do
    local key = ADMIT_AFTER_KEYS[i]
    local ok, err = pcall(ADMIT_AFTER[key])
    if not ok then slot_failed('admission', 'after:' .. tostring(key), err) end
  end
end
--@end
