(function()
  -- Effectively-once (kitium_queue.features.idempotency): marks a new job whose options
  -- ask for it, so the release fragment knows without parsing options:
  --   eo = '1'  delivery_guarantee 'exactly-once': keep its result under its key
  --   iw = 'f'  idempotency_window 'until_finished': free the key when the job ends
  --   it = ms   and the length of that window: the idempotency_ttl the key is set with
  --             (compiled in; the manager compiles it again when that TTL changes), so
  --             a job put back in wait takes its key again for as long (requeue.lua),
  --             also when the key expired before the job finished.
  -- The options JSON is compact (orjson) and a quote inside any value is escaped, so
  -- these exact key/value texts can only be the options themselves: no decoding needed.
  local EO = '"delivery_guarantee":"exactly-once"'
  local UF = '"idempotency_window":"until_finished"'
  local IT = int(math.max(1, math.min(@TTL@, MAX_MS)))
  return function(id, jk, opts, state)
    if opts == '' then return nil end
    local eo = string.find(opts, EO, 1, true)
    local uf = string.find(opts, UF, 1, true)
    if eo and uf then
      redis.call('HSET', jk, 'eo', '1', 'iw', 'f', 'it', IT)
    elseif eo then
      redis.call('HSET', jk, 'eo', '1')
    elseif uf then
      redis.call('HSET', jk, 'iw', 'f', 'it', IT)
    end
    return nil
  end
end)()
