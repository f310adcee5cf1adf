--[[
  compliance_erase.lua — erase jobs of one subject, in any state, each atomically
  (kitium_queue.features.compliance: ComplianceManager.erase_subject).

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]  the subject id
  ARGV[5]  most jobs erased by this call (clamped to 1..BATCH_MAX)

  Takes up to ARGV[5] jobs from the subject's index (subj:<subject>: job id -> its
  idempotency key) and erases each:
    * a job not finished (waiting, delayed, pending, active) passes the `release` slot
      with 'removed' first, so features give back what it held (a group's turn, a
      concurrency place, a workflow's dependents apply their failure policy);
    * it leaves every state set and its blocker (parked jobs);
    * the `erase` slot deletes the copies features keep (stored exactly-once result
      and its key, a workflow's copy of the result, ...);
    * its hash and log list are deleted, its chosen id's window ends (jids), and it
      leaves the index.
  A job whose record is already gone (an ordinary deletion) still gets the `erase`
  slot, with the idempotency key the index kept, then leaves the index. A record that
  names another subject (or none) is a later job that reused the id after the
  subject's job was deleted the ordinary way: it is not the subject's and is left
  whole (its copies, found by the same id, too); only the stale index entry goes.
  A job whose state field is damaged (not a known state) is judged by the set it is in,
  so a running or parked one still passes the `release` slot.
  An active job's worker still runs it: its lease renewals, progress, log lines and
  outcome are refused from then on (fencing: the record is gone), and its run is
  abandoned at its next renewal. It is never recovered or run again.
  When the index is empty it is deleted, with the subject's entry in `subjects`.

  Returns { erased, active, left, seen, id1, id2, ... }: jobs erased by this call, how
  many of them were active, entries left in the index (call again while > 0), index
  entries examined (erased or stale), the ids erased. An index key damaged by hand (not
  a hash) gives { 0, 0, -1, 0, <its type> } and nothing is written; a state set, meta,
  `subjects` or `jids` of another type gives KQ_DAMAGED_KEY, nothing written.
  Events: none (the erasure is reported through the admin choke point).
]]
--@include lib_base
--@include lib_jobs
--@include lib_parking
--@include slot_release
--@include slot_erase

local subject = ARGV[4]
if subject == nil or subject == '' then
  return bad_arg('compliance_erase', 'the subject id is empty')
end
local limit = arg_int(ARGV[5], 200, 1, BATCH_MAX)
local idx = PREFIX .. 'subj:' .. subject
local idx_type = key_type(idx)
if idx_type ~= 'hash' and idx_type ~= 'none' then return { 0, 0, -1, 0, idx_type } end
-- The state sets, meta (parked totals) and `subjects`, damaged by hand, would fail the
-- call after its first erasure: KQ_DAMAGED_KEY before any write.
local K_JIDS = PREFIX .. 'jids'  -- chosen ids' windows (enqueue.lua): the id goes too
local bad = check_keys(1, 2, 3, 4, 5, 6, 7) or check_key(PREFIX .. 'subjects', 'zset') or
  check_key(K_JIDS, 'zset')
if bad then return bad end
local flat = redis.call('HRANDFIELD', idx, limit, 'WITHVALUES')
-- Some servers answer nil for a missing key (the embedded memory:// one).
if type(flat) ~= 'table' then flat = {} end
local SETS = { K_WAIT, K_DELAYED, K_ACTIVE, K_COMPLETED, K_FAILED, K_DLQ }
local UNFINISHED = { waiting = true, delayed = true, pending = true, active = true }
local FINISHED = { completed = true, failed = true, dlq = true }
local out = { 0, 0, 0, 0 }
for i = 1, #flat, 2 do
  local id, ik = flat[i], flat[i + 1]
  local jk = job_key(id)
  local kind = key_type(jk)
  local mine = true
  if kind == 'hash' then
    local f = redis.call('HMGET', jk, 'st', 'ik', 'sj', 'pk')
    if f[3] ~= subject then
      mine = false
    else
      local st = f[1] or 'waiting'
      if f[2] then ik = f[2] end
      if not UNFINISHED[st] and not FINISHED[st] then
        -- A damaged state: where the job is says whether it still holds something.
        if redis.call('ZSCORE', K_ACTIVE, id) then st = 'active'
        elseif f[4] then st = 'pending'
        elseif redis.call('ZSCORE', K_WAIT, id) then st = 'waiting'
        elseif redis.call('ZSCORE', K_DELAYED, id) then st = 'delayed'
        end
      end
      if st == 'active' then out[2] = out[2] + 1 end
--@if release
      if UNFINISHED[st] then release_slot(id, jk, 'removed') end
--@end
      if st == 'pending' then forget_parked(id, jk) end
    end
  end
  if mine then
    for s = 1, #SETS do redis.call('ZREM', SETS[s], id) end
    redis.call('ZREM', K_JIDS, id)
--@if erase
    erase_slot(id, jk, ik)
--@end
    -- A key damaged by hand (another type than a hash) is the subject's job key all the
    -- same: it goes too.
    delete_job(id)
    out[1] = out[1] + 1
    out[#out + 1] = id
  end
  redis.call('HDEL', idx, id)
  out[4] = out[4] + 1
end
local left = redis.call('HLEN', idx)
if left == 0 then
  redis.call('DEL', idx)
  redis.call('ZREM', PREFIX .. 'subjects', subject)
end
out[3] = left
return out
