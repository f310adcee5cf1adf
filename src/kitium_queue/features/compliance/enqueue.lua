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
  return function(id, jk, opts, state)
    if opts == '' or not string.find(opts, '"subject_id"', 1, true) then return nil end
    local ok, o = pcall(cjson.decode, opts)
    if not ok or type(o) ~= 'table' then return nil end
    local sj = o['subject_id']
    if type(sj) ~= 'string' or sj == '' then return nil end
    local ik = o['idempotency_key']
    if type(ik) ~= 'string' then ik = '' end
    -- Writes last (a fragment never fails after its first write).
    redis.call('HSET', jk, 'sj', sj)
    redis.call('HSET', IDX .. sj, id, ik)
    redis.call('ZADD', ALL, NOW_S, sj)
    return nil
  end
end)()
