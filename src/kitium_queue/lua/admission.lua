--[[
  admission.lua — default admission check used by claim.lua: every waiting job is
  eligible. Features that decide which job may run next (FIFO group turns, tenant
  quotas, open circuit breakers) replace this fragment at load time with a composed
  admit(id, jk) that runs each registered check in order and returns false to leave the
  candidate in wait. See kitium_queue.scripts.ScriptRegistry.add_admission_check.
]]
local function admit(id, jk)
  return true
end
