--[[
  admission.lua — the admission step of claim.lua: admit(id, jk, opts) decides whether a
  waiting candidate may be handed out now.

  By default every waiting job is eligible (admission_checks.lua). Features that decide
  which job may run next (rate limits, concurrency caps, FIFO group turns, tenant quotas,
  open circuit breakers) replace the admission_checks fragment at load time with an
  admit() composed from the checks they registered; see
  kitium_queue.scripts.ScriptRegistry.add_admission_check. A rejected candidate stays in
  wait, untouched.

  Checks talk back to claim through:
    admit_retry(t)  a rejected candidate may become eligible at time t (ms); claim's
                    wake_in covers the earliest such t, so idle workers wake up then
    admit_stop()    no further candidate can pass in this call (e.g. a global cap is
                    reached): claim stops scanning
]]
local ADMIT_RETRY_AT = nil
local ADMIT_STOP = false

local function admit_retry(t)
  if ADMIT_RETRY_AT == nil or t < ADMIT_RETRY_AT then ADMIT_RETRY_AT = t end
end

local function admit_stop()
  ADMIT_STOP = true
end

--@include admission_checks
