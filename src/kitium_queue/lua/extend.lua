--[[
  extend.lua — renew the leases a worker holds, all in one call.

  KEYS: the shared layout (lib_base.lua); uses active.
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]   lease duration ms (new deadline = now + duration)
  ARGV[5..] pairs: job id, lease token

  A lease is renewed only if the job is still active under that token (fencing).
  Returns { {lost ids}, {cancelled ids}, {gone ids} }:
    lost       the lease is no longer ours (expired and re-leased, damaged record);
               the worker must abandon the job and never record its outcome.
    cancelled  renewed, but cancel_job() asked for the job to stop.
    gone       among the lost: the job's record no longer exists (erased, cleared,
               deleted or evicted while it ran), so no other worker runs it either.
  Bounded: the client sends at most 500 pairs per call.
  Arguments are checked before the first write: a duration that is not a positive
  number, or an odd number of id/token fields, is refused whole ('KQ_BAD_ARGUMENT' error
  reply, nothing written); a duration above MAX_DELAY_MS (lib_base.lua) is clamped to it.
  Damaged keys: KQ_DAMAGED_KEY when meta or active holds another type (check_keys,
  lib_base.lua), before anything is written.
]]
--@include lib_base


local duration = tonumber(ARGV[4])
if duration == nil or duration ~= duration or duration <= 0 then
  return bad_arg('extend', 'the lease duration must be a positive number of ms')
end
if (#ARGV - 4) % 2 ~= 0 then
  return bad_arg('extend', 'job ids and lease tokens must come in pairs')
end
if duration > MAX_DELAY_MS then duration = MAX_DELAY_MS end
local deadline = int(NOW + math.floor(duration))
local lost, cancelled, gone = {}, {}, {}
local damaged = keep_running_when_full() or check_keys(2)
if damaged then return damaged end
for i = 5, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  -- pcall: a job key holding another type would fail HMGET (WRONGTYPE) after the leases
  -- before it were renewed; such a job is no longer ours, so it counts as lost.
  local f = redis.pcall('HMGET', job_key(id), 'lt', 'st', 'cx')
  if not f.err and f[1] == token and f[2] == 'active' then
    -- No XX: a lease missing from the active set (the key was deleted) is put back,
    -- so the job can still be recovered if this worker dies.
    redis.call('ZADD', K_ACTIVE, deadline, id)
    if f[3] then cancelled[#cancelled + 1] = id end
  else
    lost[#lost + 1] = id
    if not f.err and not f[2] then gone[#gone + 1] = id end
  end
end
return { lost, cancelled, gone }
