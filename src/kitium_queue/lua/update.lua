--[[
  update.lua — record progress or a log line of a running job, fenced by its lease.

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]  job id
  ARGV[5]  lease token
  ARGV[6]  'progress' | 'log'
  ARGV[7]  value: encoded progress, or the log line
  ARGV[8]  max log lines kept per job: 0 = keep none; missing or not a number = 1000

  Returns 1, or raises KQ_LEASE_LOST when the caller no longer holds the lease.
  Events: job-progress (progress only; log lines never go to the stream). The progress
  value is always stored on the job (field 'pg'); the event carries it as 'progress'
  when it is at most PROGRESS_EVENT_MAX bytes, else only its size as 'progress_bytes'
  (readers take the value from the job record: JobQueue.events() does).
]]
--@include lib_events
--@include errors

-- Must match limits.MAX_PROGRESS_EVENT_BYTES. The stream keeps events_max_len entries of
-- every kind, so its size in bytes is bounded only if each entry is small: copying a
-- 64 KiB progress value into every event let progress alone grow the stream to ~640 MiB.
local PROGRESS_EVENT_MAX = 256
-- Largest number of log lines kept (options.MAX_LOG_LINES); a bigger ARGV is clamped.
local LOG_LINES_MAX = 1000000

local id = ARGV[4]
local keep = tonumber(ARGV[8])
if keep == nil or keep ~= keep then keep = 1000 end
if keep > LOG_LINES_MAX then keep = LOG_LINES_MAX end
keep = math.floor(keep)

local jk = job_key(id)
local f = redis.call('HMGET', jk, 'lt', 'st')
if f[1] ~= ARGV[5] or f[2] ~= 'active' then
  return fail(ERR_LEASE_LOST, 'job ' .. id .. ' is no longer leased by this worker')
end
if ARGV[6] == 'progress' then
  local value = ARGV[7]
  -- The event first: a damaged event stream fails this first write (nothing written;
  -- named as a damaged key in Python), not the call after the job's record changed. The
  -- record is a hash (HMGET above read it), so the HSET cannot fail.
  if #value <= PROGRESS_EVENT_MAX then
    emit('job-progress', id, 'progress', value)
  else
    emit('job-progress', id, 'progress_bytes', tostring(#value))
  end
  redis.call('HSET', jk, 'pg', value)
else
  local lk = PREFIX .. 'logs:' .. id
  if keep <= 0 then
    -- max_log_lines = 0: keep no lines (LTRIM with -0 would keep them all, or fail).
    -- UNLINK: the list may hold up to LOG_LINES_MAX lines (kept before the limit was
    -- lowered); Redis frees them in the background, not inside this call.
    redis.call('UNLINK', lk)
  else
    redis.call('RPUSH', lk, ARGV[7])
    redis.call('LTRIM', lk, -keep, -1)
  end
end
return 1
