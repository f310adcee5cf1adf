(function()
  -- Compliance (kitium_queue.features.compliance): a job added with a subject_id is
  -- marked with it (sj) and joins its subject's index, so erase_subject finds every job
  -- of the subject without a scan:
  --   subj:<subject>  HASH  job id -> the job's idempotency key ('' when none): kept
  --                         after an ordinary deletion of the job, so the copies kept
  --                         under the key can still be erased
  --   subjects        ZSET  subject -> when a job of it was last added (ms)
  -- The options JSON is only decoded when it names a subject (a plain find first).
  local IDX, ALL = PREFIX .. 'subj:', PREFIX .. 'subjects'
  local all_t = nil
  -- Subjects this call already listed in `subjects`: its score is the call's time, the
  -- same for every job, so one ZADD per subject and call says it all (a bulk enqueue
  -- of one subject's jobs).
  local listed = {}
  return function(id, jk, opts, state)
    if opts == '' or not string.find(opts, '"subject_id"', 1, true) then return nil end
    -- The accept fragment decoded this job's options and checked its subject's index
    -- a moment ago (same call): reuse that instead of decoding them again.
    local seen = SLOT_SCRATCH.compliance
    SLOT_SCRATCH.compliance = nil
    local sj, ik, idx_sound
    if seen and seen.id == id then
      sj, ik, idx_sound = seen.sj, seen.ik, true
    else
      local ok, o = pcall(cjson.decode, opts)
      if not ok or type(o) ~= 'table' then return nil end
      sj, ik = o['subject_id'], o['idempotency_key']
    end
    if type(sj) ~= 'string' or sj == '' then return nil end
    if type(ik) ~= 'string' then ik = '' end
    -- Checks first (the accept fragment refused a job whose keys are damaged; a
    -- schedule's job does not pass it), writes last: a fragment never fails after its
    -- first write. A damaged key is skipped and reported in slot-errors; the job still
    -- carries its subject (sj).
    -- `subjects`: its type read once per script call (only this ZADD writes it here).
    all_t = all_t or key_type(ALL)
    local idx_ok, all_ok = idx_sound or key_type(IDX .. sj), all_t
    idx_ok = idx_ok == true or idx_ok == 'none' or idx_ok == 'hash'
    all_ok = all_ok == 'none' or all_ok == 'zset'
    redis.call('HSET', jk, 'sj', sj)
    if idx_ok then redis.call('HSET', IDX .. sj, id, ik) end
    if all_ok and not listed[sj] then
      redis.call('ZADD', ALL, NOW_S, sj)
      listed[sj] = true
    end
    if not (idx_ok and all_ok) then
      redis.pcall('HSET', PREFIX .. 'slot-errors', 'enqueue:compliance', NOW_S ..
        ' job ' .. id .. ' of a subject was not indexed: ' ..
        (idx_ok and ALL or (IDX .. '<subject id>')) .. ' holds another type (damaged ' ..
        'outside kitium-queue); delete or restore it, then erase that job by id if needed')
    end
    return nil
  end
end)()
