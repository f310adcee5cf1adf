(function()
  -- Workflows, on erasure (the `erase` slot: a compliance period ended, or the job's
  -- subject was erased): the copies of the job's data in its dependency record go (its
  -- result and error, and a cancelled step's kept definition: data, options and the
  -- markers copied from its record, sm, which name its subject, idempotency key and
  -- webhook URL); the bookkeeping of the graph (states, parents, dependents) stays.
  local DEP = PREFIX .. 'dep:'
  return function(id, jk, ik)
    redis.call('HDEL', DEP .. id, 'r', 'e', 'sd', 'so', 'sm')
  end
end)()
