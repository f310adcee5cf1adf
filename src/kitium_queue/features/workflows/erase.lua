(function()
  -- Workflows, on erasure (the `erase` slot: a compliance period ended, or the job's
  -- subject was erased): the copies of the job's data in its dependency record go (its
  -- result and error, with the job name a sealed error is bound to, en, and a cancelled
  -- step's kept definition: data, options and the markers copied from its record, sm,
  -- which name its subject, idempotency key and webhook URL); the bookkeeping of the
  -- graph (states, parents, dependents) stays.
  -- A cancelled step whose kept definition goes is marked 'sx': a replay of its failed
  -- workflow then revives nothing (revive, prelude.lua) rather than run it without data.
  local DEP = PREFIX .. 'dep:'
  return function(id, jk, ik)
    local dk = DEP .. id
    local kept = redis.call('HEXISTS', dk, 'sn') == 1
    redis.call('HDEL', dk, 'r', 'e', 'en', 'sd', 'so', 'sm')
    if kept then redis.call('HSET', dk, 'sx', '1') end
  end
end)()
