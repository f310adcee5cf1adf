--[[
  update.lua — record progress or a log line of a running job, fenced by its lease.

  KEYS: the shared layout (common.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]  job id
  ARGV[5]  lease token
  ARGV[6]  'progress' | 'log'
  ARGV[7]  value: encoded progress, or the log line
  ARGV[8]  max log lines kept per job

  Returns 1, or raises KQ_LEASE_LOST when the caller no longer holds the lease.
  Events: job-progress (progress only).
]]
--@include common
--@include errors

local id = ARGV[4]
local jk = job_key(id)
local f = redis.call('HMGET', jk, 'lt', 'st')
if f[1] ~= ARGV[5] or f[2] ~= 'active' then
  return fail(ERR_LEASE_LOST, 'job ' .. id .. ' is no longer leased by this worker')
end
if ARGV[6] == 'progress' then
  redis.call('HSET', jk, 'pg', ARGV[7])
  emit('job-progress', id, 'progress', ARGV[7])
else
  local lk = PREFIX .. 'logs:' .. id
  redis.call('RPUSH', lk, ARGV[7])
  redis.call('LTRIM', lk, -tonumber(ARGV[8]), -1)
end
return 1
