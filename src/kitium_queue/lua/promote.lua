--[[
  promote.lua — move due delayed jobs to wait (delayed → waiting), bounded. claim.lua
  runs the same step; this script serves promote_delayed() and housekeeping.

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]  max jobs moved by this call, clamped to 0..1000 (BATCH_MAX; missing or not a
           number: 1000). promote_delayed(limit) calls again until its limit is reached
           or no due job is left, so no single call blocks Redis for long.
  ARGV[5]  dlq enabled ('1' | '0'; default '1'): where a job whose hash was deleted
           while it was delayed is recorded
  ARGV[6]  optional job id: promote only that delayed job, now, whether due or not
           (promote_job); ARGV[4] is then ignored

  Returns the number of jobs promoted; with ARGV[6]: 1 (moved), 0 (the job is not
  delayed) or -1 (no such job). Wakes idle workers when any moved.
]]
--@include lib_events
--@include lib_promote

local one = ARGV[6]
if one and one ~= '' then
  local jk = job_key(one)
  if redis.call('ZSCORE', K_DELAYED, one) == false or key_type(jk) ~= 'hash' then
    if redis.call('EXISTS', jk) == 0 then return -1 end
    return 0
  end
  push_wait(jk, one)
  redis.call('HDEL', jk, 'due')
  redis.call('ZREM', K_DELAYED, one)
  wake()
  return 1
end

local n = promote(ARGV[4], ARGV[5] ~= '0')
if n > 0 then wake() end
return n
