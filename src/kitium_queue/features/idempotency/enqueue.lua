(function()
  -- Effectively-once (kitium_queue.features.idempotency): marks a new job whose options
  -- ask for it, so the release fragment knows without parsing options:
  --   eo = '1'  delivery_guarantee 'exactly-once': keep its result under its key
  --   iw = 'f'  idempotency_window 'until_finished': free the key when the job ends
  return function(id, jk, opts, state)
    if opts == '' then return nil end
    local eo = string.find(opts, '"exactly-once"', 1, true)
    local uf = string.find(opts, '"until_finished"', 1, true)
    if not eo and not uf then return nil end
    local ok, o = pcall(cjson.decode, opts)
    if not ok or type(o) ~= 'table' then return nil end
    if o['delivery_guarantee'] == 'exactly-once' then redis.call('HSET', jk, 'eo', '1') end
    if o['idempotency_window'] == 'until_finished' then redis.call('HSET', jk, 'iw', 'f') end
    return nil
  end
end)()
