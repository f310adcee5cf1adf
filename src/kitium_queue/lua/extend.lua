--[[
  extend.lua — renew the leases a worker holds, all in one call.

  KEYS: the shared layout (common.lua); uses active.
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]   lease duration ms (new deadline = now + duration)
  ARGV[5..] pairs: job id, lease token

  A lease is renewed only if the job is still active under that token (fencing).
  Returns { {lost ids}, {cancelled ids} }:
    lost       the lease is no longer ours (expired and re-leased, job removed, ...);
               the worker must abandon the job and never record its outcome.
    cancelled  renewed, but cancel_job() asked for the job to stop.
  Bounded: the client sends at most 500 pairs per call.
]]
--@include common

local deadline = int(NOW + tonumber(ARGV[4]))
local lost, cancelled = {}, {}
for i = 5, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local f = redis.call('HMGET', job_key(id), 'lt', 'st', 'cx')
  if f[1] == token and f[2] == 'active' then
    -- No XX: a lease missing from the active set (the key was deleted) is put back,
    -- so the job can still be recovered if this worker dies.
    redis.call('ZADD', K_ACTIVE, deadline, id)
    if f[3] then cancelled[#cancelled + 1] = id end
  else
    lost[#lost + 1] = id
  end
end
return { lost, cancelled }
