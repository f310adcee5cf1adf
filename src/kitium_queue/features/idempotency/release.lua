(function()
  -- When a job with an idempotency key ends:
  --   until_finished window: the key is freed (if it still points to this job);
  --   exactly-once and completed: its encoded result is kept under the key, for as long
  --   as the key lives (idem-r:<key>, HASH id, r, f, n, o), whatever retention does to the
  --   job. A key that expired while the job ran keeps no result: a later add_job with it
  --   runs the job again (docs/effectively-once.md).
  --   The until_finished key's window length is kept on the job ('it', ms) when it is
  --   added (enqueue.lua). A job added before that (no 'it') gets it here, the first
  --   time its key is freed: its TTL left plus its age (the key was set when the job
  --   was added, 'ts'; a few ms off), so a job put back in wait takes it again for as
  --   long (requeue.lua).
  local ENDS = { completed = true, failed = true, removed = true }
  return function(id, jk, outcome, payload)
    if not ENDS[outcome] then return end
    local f = redis.pcall('HMGET', jk, 'ik', 'eo', 'iw', 'n', 'o', 'it', 'ts')
    if f.err or not f[1] then return end
    -- A key with the default window and no exactly-once: nothing to keep or free.
    if f[2] ~= '1' and f[3] ~= 'f' then return end
    local ikey = PREFIX .. 'idem:' .. f[1]
    if redis.call('GET', ikey) ~= id then return end
    if f[3] == 'f' then
      local ts = tonumber(f[7])
      if not f[6] and ts and ts == ts then
        local left = redis.call('PTTL', ikey)
        local len = math.floor(left + NOW - ts)
        if left > 0 and len >= 1 and len <= MAX_MS then redis.call('HSET', jk, 'it', int(len)) end
      end
      redis.call('DEL', ikey)
      return
    end
    if f[2] == '1' and outcome == 'completed' and type(payload) == 'string' then
      local ttl = redis.call('PTTL', ikey)
      if ttl > 0 then
        local rk = PREFIX .. 'idem-r:' .. f[1]
        redis.call('DEL', rk)
        redis.call('HSET', rk, 'id', id, 'r', payload, 'f', NOW_S, 'n', f[4] or '',
          'o', f[5] or '')
        redis.call('PEXPIRE', rk, ttl)
      end
    end
  end
end)()
