(function()
  -- Compliance: a job with a subject_id is refused (nothing of it written) while its
  -- subject's index or the `subjects` list holds another type (damaged by hand): it
  -- could not be indexed, and erase_subject would never find it. The reason names the
  -- key without the subject (personal data).
  local IDX, ALL = PREFIX .. 'subj:', PREFIX .. 'subjects'
  -- The type of `subjects`, read once per script call: nothing between two jobs of a
  -- call changes it but the enqueue fragment's ZADD, which keeps it a sorted set.
  local all_t = nil
  -- The type of each subject's index met in this call: only the enqueue fragment writes
  -- it between two jobs of a call, and its HSET keeps it a hash.
  local idx_t = {}
  return function(id, name, opts, state)
    if opts == '' or not string.find(opts, '"subject_id"', 1, true) then return nil end
    local ok, o = pcall(cjson.decode, opts)
    if not ok or type(o) ~= 'table' then return nil end
    local sj = o['subject_id']
    if type(sj) ~= 'string' or sj == '' then return nil end
    local where = nil
    local t = idx_t[sj] or key_type(IDX .. sj)
    idx_t[sj] = t
    if t ~= 'none' and t ~= 'hash' then
      where = "its subject's index " .. IDX .. '<subject id> holds a ' .. t .. ', not a hash'
    else
      all_t = all_t or key_type(ALL)
      t = all_t
      if t ~= 'none' and t ~= 'zset' then
        where = 'the list of subjects ' .. ALL .. ' holds a ' .. t .. ', not a sorted set'
      end
    end
    if not where then
      -- For the enqueue fragment, which runs next for this job (nothing is written in
      -- between but the job's own hash): its subject, key, and that the index is sound.
      SLOT_SCRATCH.compliance = { id = id, sj = sj, ik = o['idempotency_key'] }
      return nil
    end
    return 'compliance: ' .. where .. ' (damaged outside kitium-queue); the job was not ' ..
      'added, so no job escapes erasure. Delete that key (its entries are rebuilt for new ' ..
      'jobs only: erase the jobs it listed by id) or restore it, then add the job again'
  end
end)()
