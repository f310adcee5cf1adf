(function()
  -- The debounce window (idempotency_window 'debounce' on the new job): while the job
  -- its key points to has not started, a repeated key replaces that job's data and
  -- pushes its start back by the new job's delay (or runs it now without one); once it
  -- started or finished, the new job is added and the key points to it (trailing edge).
  -- Started: a worker claimed it once ('ps', written by claim, never removed). A job
  -- back in wait, delayed or parked after a run (waiting out a retry's backoff, a
  -- RetryLater, a stalled or handed-back run, put back by retry_job) has started: its
  -- next run is a run of the job as it was added, its data and due time untouched.
  local UF = '"idempotency_window":"until_finished"'
  local ENDED = { completed = true, failed = true, dlq = true }
  return function(existing, name, data, opts, delay, ik)
    -- The until_finished window: a key whose job already ended is free. The release
    -- fragment frees it when the job ends; a process without this feature (a worker of
    -- a previous release) finishes jobs without it, and the key held for its whole TTL
    -- (new jobs were deduplicated against a finished one). A record gone counts as
    -- ended when the new job asks for that window too.
    local g = redis.pcall('HMGET', job_key(existing), 'iw', 'st')
    if not g.err then
      if g[1] == 'f' and ENDED[g[2]] then return 'add' end
      if not g[2] and opts ~= '' and string.find(opts, UF, 1, true) then return 'add' end
    end
    if opts == '' or not string.find(opts, '"debounce"', 1, true) then return nil end
    local ok, o = pcall(cjson.decode, opts)
    if not ok or type(o) ~= 'table' or o['idempotency_window'] ~= 'debounce' then
      return nil
    end
    local jk = job_key(existing)
    local f = redis.pcall('HMGET', jk, 'st', 'n', 'ps')
    if f.err or not f[1] then return 'add' end
    local st = f[1]
    if f[2] ~= name or f[3] then return 'add' end
    if st == 'waiting' or st == 'delayed' then
      redis.call('HSET', jk, 'd', data)
      if delay > 0 then
        redis.call('ZREM', K_WAIT, existing)
        push_delayed(jk, existing, NOW + delay)
      elseif st == 'delayed' then
        redis.call('ZREM', K_DELAYED, existing)
        redis.call('HDEL', jk, 'due')
        push_wait(jk, existing)
        wake()
      end
      emit('job-debounced', existing)
      return nil
    end
    if st == 'pending' then
      -- Parked behind a feature's blocker: its data is replaced, its place kept.
      redis.call('HSET', jk, 'd', data)
      emit('job-debounced', existing)
      return nil
    end
    return 'add'
  end
end)()
