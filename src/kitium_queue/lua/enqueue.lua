--[[
  enqueue.lua — add one or more jobs (→ waiting | delayed).

  KEYS: the shared layout (lib_base.lua); uses wait, delayed, events, marker, id.
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]   default idempotency window in ms, clamped to 1..MAX_MS (missing or not a
            number: 86400000)
  ARGV[5..] 8 fields per job, for at most 1000 jobs:
            id ('' = an auto id, the next free sequence number), name, data,
            opts (JSON or ''), priority (clamped to 0..65535), delay ms (clamped to
            0..MAX_MS; 0 = none), lifo ('1'|'0', then 'n' when a chosen id holds no
            window: an id a feature made, or job_id_window=False), idempotency key
            ('' = none)
            A field count that is not a multiple of 8, or more than 1000 jobs, is
            refused with KQ_BAD_ARGUMENT before anything is written.

  Returns a flat array: id1, flag1, id2, flag2, ... where flag is
    'new'  — the job was created;
    'dup'  — a job with that job_id or idempotency key already exists; id is the
             existing job's id and nothing was written (a `duplicate` slot fragment may
             have updated that job, or asked for the new job to be added: then 'new');
    'refused' — a feature refused the job (its `accept` slot: a full group, a quota),
             or its idempotency key's record holds another type (damaged by hand);
             in place of the id comes the reason. Nothing of that job was written; the
             jobs after it in the call go on.
    'err'  — the job could not be added (no free auto id: see add_job in lib_add.lua);
             in place of the id comes the reason. Nothing of that job was written, and
             processing stops there: the jobs after it in the call are not written and
             have no entry in the reply.
  Damaged keys: when wait, delayed, the event stream or the marker holds another type,
  or the id counter something that is not an integer, the call answers
  KQ_DAMAGED_KEY <found> <expected> <key> before anything is written.
  Fence: when a feature filled the `fence` slot and it refuses (kitium_queue.slots), the
  call answers KQ_FENCED <reason> before anything is written.
  Chosen ids and auto ids never overwrite a job: a chosen id that exists is 'dup', and
  an auto id skips sequence numbers whose job hash exists. A chosen id stays taken for
  the idempotency window after its job was removed: each new job of a chosen id is
  added to <prefix>jids (a sorted set: id -> end of its window, ms), and a chosen id
  whose window lasts is 'dup' too. Ended windows are dropped a few per call, the set
  expires with its last window, and clear() deletes it. A jids key of another type refuses a call holding a chosen id
  (KQ_DAMAGED_KEY) before anything is written.
  Events: job-added (with state) per new job.
]]
--@include lib_base
--@include lib_sets
--@include lib_add
--@include slot_duplicate
--@include slot_fence

local MAX_JOBS = 1000
local fields = #ARGV - 4
if fields < 0 or fields % 8 ~= 0 or fields / 8 > MAX_JOBS then
  return bad_arg('enqueue', 'expected 8 fields for each of at most ' .. MAX_JOBS ..
    ' jobs after ARGV[4], got ' .. fields .. ' fields')
end
--@if fence
local fenced = fence_slot('enqueue')
if fenced then return redis.error_reply('KQ_FENCED ' .. fenced) end
--@end
-- Keys written after the call's first write (check_keys, lib_base.lua): four commands a
-- call, none per job. The id counter needs none: add_job's INCR of it is the first write.
local damaged = check_keys(1, 3, 8, 9)
if damaged then return damaged end
local idem_ms = arg_int(ARGV[4], 86400000, 1, MAX_MS)
local idem_ttl = int(idem_ms)
-- Chosen ids of the window: id -> when it ends (ms). Checked when the call holds one.
local K_JIDS = PREFIX .. 'jids'
local chosen = 0
for b = 5, #ARGV, 8 do
  if ARGV[b] ~= '' and not string.find(ARGV[b + 6], 'n', 2, true) then chosen = chosen + 1 end
end
if chosen > 0 then
  damaged = check_key(K_JIDS, 'zset')
  if damaged then return damaged end
end
local out = {}
local woke = false
-- The call's new waiting jobs, added to wait together at the end (flush_wait): score/id
-- pairs, and (with a duplicate fragment) their ids (id -> true).
local waiting = {}
--@if duplicate
local batched = {}
--@end
for j = 0, fields / 8 - 1 do
  local b = 5 + j * 8
  local custom, name, data, opts = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  local pri, delay, lifo, ik = ARGV[b + 4], ARGV[b + 5], ARGV[b + 6], ARGV[b + 7]
  local windowed = custom ~= '' and not string.find(lifo, 'n', 2, true)
  lifo = string.sub(lifo, 1, 1)
  local existing = nil
  local ikey = nil
  local damaged = nil
  if ik ~= '' then
    ikey = PREFIX .. 'idem:' .. ik
    -- pcall: a key of another type (written by hand) refuses this job alone, before
    -- anything of it is written, never the call after the batch's earlier jobs.
    existing = redis.pcall('GET', ikey)
    if type(existing) == 'table' then
      existing = nil
      damaged = 'the record of its idempotency key (' .. ikey .. ') holds another ' ..
        'type, not a job id: the job was not added. Delete that key (it was not ' ..
        'written by kitium-queue) and add the job again'
    end
  end
--@if duplicate
  -- A fragment that acts on a job of this call (a debounce moving it to delayed) must
  -- find it where its record says: its place in wait is written first, else the end of
  -- the call would add it to wait wherever the fragment put it.
  if existing and batched[existing] then
    flush_wait(waiting)
    waiting = {}
    batched = {}
  end
  -- A feature may act on the job the key points to (debounce) or add this one anyway.
  if existing and duplicate_slot(existing, name, data, opts, arg_int(delay, 0, 0, MAX_MS), ik) then
    existing = nil
  end
--@end
  -- A chosen id is taken while its job exists and, after the job was removed (by hand
  -- or by retention), until the end of its idempotency window (K_JIDS).
  if not existing and custom ~= '' and (redis.call('EXISTS', job_key(custom)) == 1 or
      (windowed and num(redis.call('ZSCORE', K_JIDS, custom)) > NOW)) then
    existing = custom
  end
  if damaged then
    out[#out + 1] = damaged
    out[#out + 1] = 'refused'
  elseif existing then
    out[#out + 1] = existing
    out[#out + 1] = 'dup'
  else
    -- add_job clamps priority and delay itself (arg_int), so no value of theirs can
    -- fail a command after this job's first write.
    local id, jk, state = add_job(custom, name, data, opts, pri, delay, lifo, waiting)
    if not id and state == 'refused' then
      out[#out + 1] = jk  -- the reason
      out[#out + 1] = 'refused'
    elseif not id then
      out[#out + 1] = jk  -- the reason
      out[#out + 1] = 'err'
      break
    else
      if state == 'waiting' then woke = true end
--@if duplicate
      if state == 'waiting' then batched[id] = true end
--@end
      if ikey then
        redis.call('HSET', jk, 'ik', ik)
        redis.call('SET', ikey, id, 'PX', idem_ttl)
      end
      if windowed then redis.call('ZADD', K_JIDS, int(NOW + idem_ms), custom) end
      out[#out + 1] = id
      out[#out + 1] = 'new'
    end
  end
end
flush_wait(waiting)
if woke then wake() end
if chosen > 0 then
  -- Windows that ended: a bounded number per call, more than the call adds.
  local ended = redis.call('ZRANGEBYSCORE', K_JIDS, '-inf', NOW, 'LIMIT', 0, 100 + 2 * chosen)
  if #ended > 0 then redis.call('ZREM', K_JIDS, unpack(ended)) end
  -- The set ends with its last window, also when no chosen id is added again.
  if redis.call('PTTL', K_JIDS) < idem_ms then redis.call('PEXPIRE', K_JIDS, idem_ttl) end
end
return out
