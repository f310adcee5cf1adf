(function()
  @PRELUDE@
  -- On the primary, a finished job put back to wait (retry_job, bulk_retry, replay_dlq)
  -- is announced: the secondaries put their copy back to wait too.
  return function(id, jk, from)
    if not primary_epoch() then return end
    outbox_add('rg', 'op', 'req', 'id', id)
  end
end)()
