(function()
  -- The until_finished window, for a finished job put back in wait (retry_job,
  -- bulk_retry, replay_dlq, a workflow's step revived by a replay: the `requeue` slot):
  -- its key was freed when it ended; it is unfinished again, so it takes its key again
  -- (with the queue's idempotency_ttl, compiled in: @TTL@ ms) unless another job holds
  -- it meanwhile (a job added with the key after it ended keeps it).
  local TTL = @TTL@
  return function(id, jk, from)
    local f = redis.pcall('HMGET', jk, 'ik', 'iw')
    if f.err or not f[1] or f[2] ~= 'f' then return end
    local ikey = PREFIX .. 'idem:' .. f[1]
    if key_type(ikey) ~= 'none' and key_type(ikey) ~= 'string' then return end
    redis.call('SET', ikey, id, 'PX', TTL, 'NX')
  end
end)()
