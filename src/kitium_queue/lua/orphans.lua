--[[
  orphans.lua — find job records that no state set lists, and put them back
  (orphans.find_orphans).

  A job record (<prefix>job:<id>, a hash) says its status in 'st'; the set of that status
  lists it (wait, active, delayed, completed, failed, dlq; a pending job the parked set
  of its blocker 'pk'). A record no set lists is an orphan: nothing will ever run, show or
  remove it. It happens when a set was evicted (an evicting maxmemory-policy accepted with
  settings.allow_eviction), deleted or overwritten by hand, or when Redis refused a
  command in the middle of a script (an ACL rule taken away while a worker ran): Redis
  never rolls a script back. The Python side walks the job records with SCAN and sends
  them here a page at a time; each call is atomic and bounded (at most BATCH_MAX ids).

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]  '1': put the orphans back; else nothing is written (a report only)
  ARGV[5]  lease grace ms (clamped to 0..MAX_MS; missing: 30000): an orphan whose status
           is 'active' goes back into active with its lease ending this long from now,
           so a worker still running it keeps its run (its next renewal finds it) and,
           when no worker has it, recovery requeues it as a stalled run once it is due
  ARGV[6..] job ids, at most BATCH_MAX

  For each id whose record is a hash: nothing when the set of its status lists it, or
  when any state set lists it (a job is never put in two places). Otherwise, by status:
    waiting    back into wait at its own place (priority and enqueue order); so is a
               record with a name and no status (read as waiting, as everywhere)
    delayed    back into delayed at its due time ('due'; none, past, or further than
               any delay can be: into wait)
    active     back into active, its lease ending `grace` ms from now (see ARGV[5])
    completed, failed, dlq
               back into its finished set at its finish time ('f'; none or in the
               future: now), where retention trims it as any other
    pending    left alone and counted as 'parked': its blocker's set lacks it, which
               parking.rebuild_parked repairs (it knows each blocker's rules)
    anything else (an unknown status, no status and no name)
               left alone and counted as 'unknown'
  A key that is not a hash is counted as 'damaged' (claim, promote and recovery
  dead-letter such a record when they meet it).

  Returns { examined, {status, id, ...} of the orphans, parked, unknown, damaged,
            {ids of parked and unknown records} }.
  Damaged keys: with ARGV[4] = '1', KQ_DAMAGED_KEY <found> <expected> <key> when a state
  set or the marker holds another type; nothing was written.
]]
--@include lib_base
--@include lib_events
--@include lib_jobs
--@include lib_listed

local REPAIR = ARGV[4] == '1'
local GRACE = arg_int(ARGV[5], 30000, 0, MAX_MS)
local FIRST = 6

if #ARGV - FIRST + 1 > BATCH_MAX then
  return bad_arg('orphans', 'at most ' .. BATCH_MAX .. ' ids per call, got ' .. (#ARGV - FIRST + 1))
end
if REPAIR then
  local damaged = check_keys(1, 2, 3, 4, 5, 6, 9)
  if damaged then return damaged end
end

local HOME = {
  waiting = K_WAIT, active = K_ACTIVE, delayed = K_DELAYED,
  completed = K_COMPLETED, failed = K_FAILED, dlq = K_DLQ,
}

local examined, parked, unknown, damaged = 0, 0, 0, 0
local found, odd = {}, {}
local woke = false
for i = FIRST, #ARGV do
  local id = ARGV[i]
  local jk = job_key(id)
  -- pcall: a key of another type answers WRONGTYPE; a missing one all nils.
  local f = redis.pcall('HMGET', jk, 'st', 'pk', 'due', 'f', 'n')
  if f.err then
    damaged = damaged + 1
  elseif f[1] or f[5] or redis.call('EXISTS', jk) == 1 then
    examined = examined + 1
    local st = f[1]
    -- A record without a status that names a job reads as waiting, as everywhere else.
    if not st and f[5] then st = 'waiting' end
    local home = st and HOME[st]
    if home and in_set(home, id) then
      -- where its status says
    elseif st == 'pending' and f[2] and in_set(PREFIX .. 'parked:' .. f[2], id) then
      -- parked behind its blocker
    elseif in_state_set(id) then
      -- in a set other than its status names: not lost, left alone
    elseif st == 'pending' then
      parked = parked + 1
      odd[#odd + 1] = id
    elseif not home then
      unknown = unknown + 1
      odd[#odd + 1] = id
    else
      found[#found + 1] = st
      found[#found + 1] = id
      if REPAIR then
        if st == 'waiting' then
          push_wait(jk, id)
          woke = true
        elseif st == 'delayed' then
          -- A due time past any delay (damaged by hand) would never come: due now.
          local due = num(f[3])
          if due > NOW and due <= NOW + MAX_DELAY_MS then
            push_delayed(jk, id, due)
          else
            push_wait(jk, id)
            redis.call('HDEL', jk, 'due')
            woke = true
          end
        elseif st == 'active' then
          redis.call('ZADD', K_ACTIVE, int(NOW + GRACE), id)
        else
          local at = num(f[4])
          if at <= 0 or at > NOW then at = NOW end
          redis.call('ZADD', home, int(at), id)
        end
      end
    end
  end
end
if woke then wake() end
return { examined, found, parked, unknown, damaged, odd }
