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
  (a stored exactly-once result lives no longer than its key), and no copy is kept under
  its id either (a workflow's dependency record dep:<id> holding its result, error or a
  cancelled step's definition, which a replay of the failed step brings back). Such
  entries are left by ordinary deletions (retention trims, remove_job, drain, clear).
  An entry whose record names another subject (or none) is dropped too: a later job
  reused the id, and an erasure leaves that job alone (compliance_erase.lua). An index
  left empty is deleted, with the subject's entry in `subjects`. An index key damaged
  by hand (not a hash) is skipped, nothing written: it indexes nothing, and the erasure
  of its subject reports it.
  Returns { next cursor ('0': done), dropped }.
]]
--@include lib_base

local subject = ARGV[4]
local idx = PREFIX .. 'subj:' .. subject
local count = arg_int(ARGV[6], 200, 1, BATCH_MAX)
local idx_type = key_type(idx)
if idx_type == 'none' then
  redis.call('ZREM', PREFIX .. 'subjects', subject)
  return { '0', 0 }
end
if idx_type ~= 'hash' then return { '0', 0 } end
local page = redis.call('HSCAN', idx, ARGV[5] or '0', 'COUNT', count)
local flat = page[2]
local drop = {}
for i = 1, #flat, 2 do
  local id, ik = flat[i], flat[i + 1]
  local jk = job_key(id)
  local kind = key_type(jk)
  if kind == 'hash' then
    -- A later job that reused the id: not the subject's.
    if redis.call('HGET', jk, 'sj') ~= subject then drop[#drop + 1] = id end
  elseif kind == 'none' then
    -- pcall: a key damaged by hand (another type) holds no result of this job.
    local held = ik ~= '' and redis.pcall('GET', PREFIX .. 'idem:' .. ik) == id
    if not held then
      -- A workflow's dependency record of the job (features.workflows) may still keep
      -- copies of it: its result, its error, or, for a step its failed workflow
      -- cancelled, its data, options and markers, which a replay brings back as the
      -- job. Its erase fragment deletes them; the entry stays while any is there.
      local c = redis.pcall('HMGET', PREFIX .. 'dep:' .. id, 'r', 'e', 'sd', 'so', 'sm')
      held = type(c) == 'table' and not c.err and (c[1] or c[2] or c[3] or c[4] or c[5])
    end
    if not held then drop[#drop + 1] = id end
  end
end
-- Checks first, writes last.
for i = 1, #drop do redis.call('HDEL', idx, drop[i]) end
if redis.call('HLEN', idx) == 0 then
  redis.call('DEL', idx)
  redis.call('ZREM', PREFIX .. 'subjects', subject)
  return { '0', #drop }
end
return { page[1], #drop }
