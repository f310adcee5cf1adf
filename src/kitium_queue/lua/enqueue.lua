--[[
  enqueue.lua — add one or more jobs (→ waiting | delayed).

  KEYS: the shared layout (common.lua); uses wait, delayed, events, marker, id.
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]   default idempotency window in ms
  ARGV[5..] 8 fields per job:
            id ('' = next sequence number), name, data, opts (JSON or ''),
            priority (0..65535), delay ms (0 = none), lifo ('1'|'0'),
            idempotency key ('' = none)

  Returns a flat array: id1, flag1, id2, flag2, ... where flag is
    'new'  — the job was created;
    'dup'  — a job with that job_id or idempotency key already exists; id is the
             existing job's id and nothing was written.
  Events: job-added (with state) per new job.
  Bounded: the client sends at most 1000 jobs per call.
]]
--@include common

local idem_ttl = tonumber(ARGV[4])
local out = {}
local woke = false
local waiting = {}
local n = (#ARGV - 4) / 8
for j = 0, n - 1 do
  local b = 5 + j * 8
  local custom, name, data, opts = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  local pri, delay, lifo, ik = tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5]), ARGV[b + 6], ARGV[b + 7]
  local existing = nil
  local ikey = nil
  if ik ~= '' then
    ikey = PREFIX .. 'idem:' .. ik
    existing = redis.call('GET', ikey)
  end
  if not existing and custom ~= '' and redis.call('EXISTS', job_key(custom)) == 1 then
    existing = custom
  end
  if existing then
    out[#out + 1] = existing
    out[#out + 1] = 'dup'
  else
    local id, jk, state = add_job(custom, name, data, opts, pri, delay, lifo, waiting)
    if state == 'waiting' then woke = true end
    if ikey then
      redis.call('HSET', jk, 'ik', ik)
      redis.call('SET', ikey, id, 'PX', idem_ttl)
    end
    out[#out + 1] = id
    out[#out + 1] = 'new'
  end
end
flush_wait(waiting)
if woke then wake() end
return out
