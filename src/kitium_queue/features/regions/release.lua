(function()
  @PRELUDE@
  -- On the primary, an outcome that ends a job (with its result or reason, or the
  -- payload of a removal; its options for the retention of the copies, its idempotency
  -- key and what is left of its window) and the attempts a retry spent go to the
  -- outbox for the secondaries.
  return function(id, jk, outcome, payload)
    if not primary_epoch() then return end
    if outcome == 'completed' or outcome == 'failed' or outcome == 'removed' then
      local f = redis.pcall('HMGET', jk, 'ik', 'o', 'n', 'ts', 'p', 'ep')
      if f.err then f = {} end
      local ttl = 0
      if f[1] then ttl = redis.call('PTTL', PREFIX .. 'idem:' .. f[1]) end
      -- A removal's payload: what the feature that removed the job said (a workflow's
      -- cancellation), for the same feature's fragments at the copies.
      local pl = ''
      if type(payload) == 'string' then pl = payload end
      outbox_add('rg', 'op', 'end', 'id', id, 'oc', outcome, 'pl', pl, 'ik', f[1] or '',
        'ittl', int(ttl), 'o', f[2] or '', 'n', f[3] or '', 'ts', f[4] or '', 'p', f[5] or '0',
        'ep', f[6] or '')
    elseif outcome == 'retrying' then
      local a = redis.pcall('HGET', jk, 'a')
      if type(a) ~= 'string' then a = '0' end
      outbox_add('rg', 'op', 'att', 'id', id, 'a', a)
    end
  end
end)()
