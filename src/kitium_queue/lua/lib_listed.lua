--[[
  lib_listed.lua — fragment: whether a state set lists a job, for the repairs that walk
  the job records (park_rebuild.lua, orphans.lua).
  in_set(key, id)     whether sorted set `key` lists `id`; a key of another type reads
                      as not listing it (pcall: never an error half way through a call)
  in_state_set(id)    whether wait, active, delayed, completed, failed or the DLQ lists it
]]
--@include lib_base
local STATE_SETS = { K_WAIT, K_ACTIVE, K_DELAYED, K_COMPLETED, K_FAILED, K_DLQ }

local function in_set(key, id)
  local s = redis.pcall('ZSCORE', key, id)
  return s and type(s) ~= 'table'
end

local function in_state_set(id)
  for s = 1, #STATE_SETS do
    if in_set(STATE_SETS[s], id) then return true end
  end
  return false
end
