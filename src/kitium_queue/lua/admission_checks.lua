--[[
  admission_checks.lua — the default admit(): every waiting job is eligible. Replaced at
  load time when features register admission checks (see admission.lua).
]]
local function admit(id, jk, opts)
  return true
end
