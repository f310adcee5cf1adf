--[[
  promote.lua — move delayed jobs to wait (delayed → waiting): the due ones, bounded, or
  one chosen job whether due or not. claim.lua runs the first step too; this script
  serves promote_delayed(), promote_job() and housekeeping.

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]  max jobs moved by this call, clamped to 0..1000 (BATCH_MAX; missing or not a
           number: 1000). promote_delayed(limit) calls again until its limit is reached
           or no due job is left, so no single call blocks Redis for long.
  ARGV[5]  dlq enabled ('1' | '0'; default '1'): where a job whose hash was deleted
           while it was delayed is recorded
  ARGV[6]  optional: one job id (promote_job). Only that job moves, due or not, and
           ARGV[4] is not used. Raises KQ_JOB_NOT_FOUND when there is no such job (or
           its record is gone) and KQ_BAD_STATE when it is not delayed; nothing is
           written in either case.

  Returns the number of jobs promoted (with ARGV[6]: 1). Wakes idle workers when any
  moved.
  Damaged keys: KQ_DAMAGED_KEY <found> <expected> <key> when a key it writes holds
  another type (check_keys, lib_base.lua); nothing was written.
]]
--@include lib_events
--@include lib_promote
--@include errors

-- The keys written after the first write (check_keys, lib_base.lua): wait and the
-- marker, and for the due-time promote the set a job whose record is gone is recorded in
-- and the event stream.
local damaged
if ARGV[6] then
  damaged = check_keys(1, 9)
elseif ARGV[5] ~= '0' then
  damaged = check_keys(1, 6, 8, 9)
else
  damaged = check_keys(1, 5, 8, 9)
end
if damaged then return damaged end

if ARGV[6] then
  local id = ARGV[6]
  local jk = job_key(id)
  local kt = key_type(jk)
  if redis.call('ZSCORE', K_DELAYED, id) == false then
    if kt ~= 'hash' then return fail(ERR_JOB_NOT_FOUND, 'job ' .. id .. ' does not exist') end
    local st = redis.call('HGET', jk, 'st') or 'waiting'
    return fail(ERR_BAD_STATE, 'job ' .. id .. ' is ' .. st ..
      '; only delayed jobs can be promoted')
  end
  if kt ~= 'hash' then
    -- Left for the due-time promote, which dead-letters it as a record of the loss.
    return fail(ERR_JOB_NOT_FOUND, 'job ' .. id .. ' is delayed but its record is gone')
  end
  push_wait(jk, id)
  redis.call('HDEL', jk, 'due')
  redis.call('ZREM', K_DELAYED, id)
  wake()
  return 1
end

local n = promote(ARGV[4], ARGV[5] ~= '0')
if n > 0 then wake() end
return n
