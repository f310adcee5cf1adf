(function()
  -- Effectively-once, on erasure (the `erase` slot: a compliance period ended, or the
  -- job's subject was erased): the job's idempotency key, the result kept under it and
  -- an execution record made for it go, each only if it names this job (a key reused by
  -- a later job is left alone). Checks first, writes last.
  return function(id, jk, ik)
    if ik == nil or ik == '' then return end
    local ikey = PREFIX .. 'idem:' .. ik
    local rk = PREFIX .. 'idem-r:' .. ik
    local xk = PREFIX .. 'idem-x:' .. ik
    local own_key = redis.call('GET', ikey) == id
    local own_result = redis.call('HGET', rk, 'id') == id
    local own_record = redis.call('HGET', xk, 'id') == id
    if own_key then redis.call('DEL', ikey) end
    if own_result then redis.call('DEL', rk) end
    if own_record then
      redis.call('DEL', xk)
      redis.call('ZREM', PREFIX .. 'idem-x', ik)
    end
  end
end)()
