(function()
  @PRELUDE@
  -- On the primary, every new job carries the epoch it was accepted in ('ep') and is
  -- announced to the secondaries through the outbox (the replicator reads it). A job a
  -- secondary applies from the primary passes here too: it is not the primary there, so
  -- nothing is written (the apply script stamps the epoch of origin).
  return function(id, jk, opts, state)
    local ep = primary_epoch()
    if not ep then return nil end
    redis.call('HSET', jk, 'ep', ep)
    outbox_add('rg', 'op', 'add', 'id', id)
    return nil
  end
end)()
