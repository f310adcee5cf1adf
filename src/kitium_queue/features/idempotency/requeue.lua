(function()
  -- The until_finished window, for a finished job put back in wait (retry_job,
  -- bulk_retry, replay_dlq, a workflow's step revived by a replay: the `requeue` slot):
  -- its key was freed when it ended; it is unfinished again, so it takes its key again
  -- unless another job holds it meanwhile (a job added with the key after it ended
  -- keeps it), for the window the job was added with ('it', kept on it when it was
  -- added: enqueue.lua; on a job added before that, when its key was freed:
  -- release.lua), else for the idempotency_ttl of the queue that installed this
  -- fragment (compiled in), which is then kept as the job's.
  local TTL = @TTL@
  return function(id, jk, from)
    local f = redis.pcall('HMGET', jk, 'ik', 'iw', 'it')
    if f.err or not f[1] or f[2] ~= 'f' then return end
    local ikey = PREFIX .. 'idem:' .. f[1]
    if key_type(ikey) ~= 'none' and key_type(ikey) ~= 'string' then return end
    -- The window the job was added with (kept by enqueue.lua, or by release.lua when
    -- its key was freed), else (a job added by a previous release whose key had
    -- expired, a workflow step written anew) this one.
    local ttl = tonumber(f[3])
    if not ttl or ttl ~= ttl or ttl < 1 or ttl > MAX_MS then ttl = TTL end
    if redis.call('SET', ikey, id, 'PX', int(ttl), 'NX') and not f[3] then
      redis.call('HSET', jk, 'it', int(ttl))
    end
  end
end)()
