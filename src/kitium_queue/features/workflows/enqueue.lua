(function()
  @PRELUDE@
  -- Records a new job's parents; parks it behind its first unfinished parent.
  return function(id, jk, opts, state)
    local deps, wid, o = opts_of(opts)
    if not deps then return nil end
    if wid then
      -- A workflow step: wf_create recorded its parents just before adding it.
      local pre = redis.call('HMGET', DEP .. id, 'st', 'np', 'wb')
      if pre[1] then
        if num(pre[2]) <= 0 or not pre[3] then return nil end
        redis.call('HSET', jk, 'wd', '1')
        return 'wp:' .. pre[3]
      end
    end
    local first = add_parents(id, deps, wid, o['workflow_step'], o['on_failure'])
    if not first then return nil end
    redis.call('HSET', jk, 'wd', '1')
    return 'wp:' .. first
  end
end)()
