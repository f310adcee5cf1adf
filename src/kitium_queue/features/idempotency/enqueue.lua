(function()
  -- Effectively-once (kitium_queue.features.idempotency): marks a new job whose options
  -- ask for it, so the release fragment knows without parsing options:
  --   eo = '1'  delivery_guarantee 'exactly-once': keep its result under its key
  --   iw = 'f'  idempotency_window 'until_finished': free the key when the job ends
  -- The options JSON is compact (orjson) and a quote inside any value is escaped, so
  -- these exact key/value texts can only be the options themselves: no decoding needed.
  local EO = '"delivery_guarantee":"exactly-once"'
  local UF = '"idempotency_window":"until_finished"'
  return function(id, jk, opts, state)
    if opts == '' then return nil end
    local eo = string.find(opts, EO, 1, true)
    local uf = string.find(opts, UF, 1, true)
    if eo and uf then
      redis.call('HSET', jk, 'eo', '1', 'iw', 'f')
    elseif eo then
      redis.call('HSET', jk, 'eo', '1')
    elseif uf then
      redis.call('HSET', jk, 'iw', 'f')
    end
    return nil
  end
end)()
