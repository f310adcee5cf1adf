--[[
  compliance_gc.lua — drop the index entries of a subject whose jobs are gone
  (kitium_queue.features.compliance, run by the retention service).

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]  the subject id
  ARGV[5]  HSCAN cursor of its index ('0' to start)
  ARGV[6]  HSCAN count (clamped to 1..BATCH_MAX)

  An entry (job id -> idempotency key) is dropped when the job's record is gone and no
  copy kept under its key can remain: the key is empty, or no longer points to the job
  (a stored exactly-once result lives no longer than its key). Such entries are left by
  ordinary deletions (retention trims, remove_job, drain, clear). An index left empty is
  deleted, with the subject's entry in `subjects`.
  Returns { next cursor ('0': done), dropped }.
]]
--@include lib_base

local subject = ARGV[4]
local idx = PREFIX .. 'subj:' .. subject
local count = arg_int(ARGV[6], 200, 1, BATCH_MAX)
local page = redis.call('HSCAN', idx, ARGV[5] or '0', 'COUNT', count)
local flat = page[2]
local dropped = 0
for i = 1, #flat, 2 do
  local id, ik = flat[i], flat[i + 1]
  if redis.call('EXISTS', job_key(id)) == 0 then
    -- pcall: a key damaged by hand (another type) holds no result of this job.
    local held = ik ~= '' and redis.pcall('GET', PREFIX .. 'idem:' .. ik) == id
    if not held then
      redis.call('HDEL', idx, id)
      dropped = dropped + 1
    end
  end
end
if redis.call('HLEN', idx) == 0 then
  redis.call('DEL', idx)
  redis.call('ZREM', PREFIX .. 'subjects', subject)
  return { '0', dropped }
end
return { page[1], dropped }
