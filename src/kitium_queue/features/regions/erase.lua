(function()
  @PRELUDE@
  -- On the primary, an erased job (its subject's erasure, a compliance retention period
  -- that ended) is announced, in any state, with its idempotency key and its subject:
  -- each secondary erases its copy and what its features keep of it (rg_apply.lua).
  -- A job not finished passed the `release` slot first ('removed'): its removal is in
  -- the outbox already, but a finished copy is left by a removal.
  return function(id, jk, ik)
    if not primary_epoch() then return end
    local sj = redis.pcall('HGET', jk, 'sj')
    if type(sj) ~= 'string' then sj = '' end
    outbox_add('rg', 'op', 'erase', 'id', id, 'ik', ik or '', 'sj', sj)
  end
end)()
