--[[
  lib_add.lua — fragment: add_job, the creation of one job. Used by enqueue.lua and by
  scripts that add jobs atomically with their own state change (schedule_fire.lua).

  add_job(id, name, data, opts, pri, delay, lifo, batch) -> id, job key, state
    Create job <id> ('' = an auto id: its sequence number) in wait, or in delayed when
    delay > 0 ms, and write its job-added event. state: 'waiting' | 'delayed', or
    'pending' when a feature's `enqueue` slot fragment parked it (lib_parking.lua).
    Returns nil and a reason when no free auto id was found, in which case nothing of
    the job was written (only the sequence counter moved); nil, a reason and 'refused'
    when a feature's `accept` slot fragment refused the job (nothing of it written). Callers that pass a chosen id
    never get nil: they check themselves whether that id exists (a chosen id is never
    replaced either).
    priority is clamped to 0..65535 and delay to 0..MAX_MS (a missing or NaN value counts
    as 0), so no score or PX argument can be refused after the job's first write.
    The caller wakes idle workers (wake()) once per call when a job went to wait. With
    `batch` (a table), the ZADD to wait is left to the caller as score/id pairs, so a bulk
    enqueue adds its waiting jobs in one command per 500 (flush_wait).

  Slot: every new job passes the `enqueue` slot (ScriptRegistry.add_slot) right after its
  hash is written; with no fragment in that slot, nothing of it is compiled in.
]]
--@include lib_base
--@include lib_events
--@include lib_jobs
--@include slot_accept
--@include slot_enqueue

-- Most sequence numbers add_job takes while looking for a free auto id (see above).
local AUTO_ID_TRIES = 1000

local function add_job(id, name, data, opts, pri, delay, lifo, batch)
  pri = arg_int(pri, 0, 0, 65535)
  delay = arg_int(delay, 0, 0, MAX_MS)
  -- pcall: a damaged id counter fails its first INCR, the first write of a call's first
  -- job (nothing was written): raised as KQ_DAMAGED_KEY, with the key. Any other error
  -- is the server refusing the write (OOM, MISCONF, NOREPLICAS; the counter may not
  -- exist yet) and is raised as it is.
  local seq = redis.pcall('INCR', K_ID)
  if type(seq) == 'table' then
    local e = seq.err
    if string.find(e, 'WRONGTYPE', 1, true) or string.find(e, 'not an integer', 1, true)
        or string.find(e, 'overflow', 1, true) then
      error(damaged_key(10, redis.call('TYPE', K_ID)['ok']))
    end
    error(seq)
  end
  if id == '' then
    -- Auto ids are sequence numbers, and a job hash may already sit at the next one: a
    -- numeric job_id chosen by an older version or another client, or a counter that was
    -- reset. Overwriting it would silently replace another job, so skip taken numbers.
    -- Bounded: after AUTO_ID_TRIES taken numbers in a row, give up for this job.
    local tries = 1
    while redis.call('EXISTS', job_key(int(seq))) == 1 do
      if tries >= AUTO_ID_TRIES then
        return nil, 'no free auto id: job ids ' .. int(seq - tries + 1) .. ' to ' ..
          int(seq) .. ' are all taken by existing jobs (numeric job ids chosen outside ' ..
          'the sequence?); the job was not added, and adding it again continues after ' ..
          'them'
      end
      seq = redis.call('INCR', K_ID)
      tries = tries + 1
    end
    -- int(), not tostring(): tostring prints 1e14 and above in exponent form, so two
    -- different sequence numbers could map to one id.
    id = int(seq)
  end
  local q = seq
  if lifo == '1' then q = -seq end
  local jk = job_key(id)
  local state = 'waiting'
  if delay > 0 then state = 'delayed' end
--@if accept
  local refused = accept_slot(id, name, opts, state)
  if refused then return nil, refused, 'refused' end
--@end
  if opts ~= '' then
    redis.call('HSET', jk, 'n', name, 'd', data, 'ts', NOW_S, 'p', pri, 'q', int(q), 'a', 0,
      's', 0, 'st', state, 'o', opts)
  else
    redis.call('HSET', jk, 'n', name, 'd', data, 'ts', NOW_S, 'p', pri, 'q', int(q), 'a', 0,
      's', 0, 'st', state)
  end
--@if enqueue
  if enqueue_slot(id, jk, opts, state, pri, q) then state = 'pending' end
--@end
  if delay > 0 then
    push_delayed(jk, id, NOW + delay)
--@if enqueue
  elseif state == 'pending' then
    -- Parked by a feature's enqueue fragment: it waits outside wait (lib_parking.lua).
--@end
  elseif batch then
    batch[#batch + 1] = int(wait_score(pri, q))
    batch[#batch + 1] = id
  else
    redis.call('ZADD', K_WAIT, int(wait_score(pri, q)), id)
  end
  emit('job-added', id, 'name', name, 'st', state)
  return id, jk, state
end
