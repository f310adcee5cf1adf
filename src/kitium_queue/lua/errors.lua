--[[
  errors.lua — the error codes scripts raise. Mirrored by kitium_queue.errors.SCRIPT_ERRORS;
  tests/test_errors.py checks the two lists match. Each reply is "<CODE> <detail>".
]]
local ERR_JOB_NOT_FOUND = 'KQ_JOB_NOT_FOUND'
local ERR_JOB_ACTIVE = 'KQ_JOB_ACTIVE'
local ERR_BAD_STATE = 'KQ_BAD_STATE'
local ERR_QUEUE_ACTIVE = 'KQ_QUEUE_ACTIVE'
local ERR_LEASE_LOST = 'KQ_LEASE_LOST'
local ERR_BAD_ARGUMENT = 'KQ_BAD_ARGUMENT'
local ERR_FENCED = 'KQ_FENCED'
local ERR_DAMAGED_KEY = 'KQ_DAMAGED_KEY'

local function fail(code, detail)
  -- Redis ends an error's text at a NUL byte (an id may hold one): write it as \0.
  return redis.error_reply(code .. ' ' .. string.gsub(detail, '%z', '\\0'))
end
