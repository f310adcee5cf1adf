(function()
  @PRELUDE@
  -- Records a new job's parents (and, with a workflow_id, makes it a step of that
  -- workflow); parks it behind its first unfinished parent.
  return function(id, jk, opts, state)
    local deps, wid, o = opts_of(opts)
    if not deps then return nil end
    local step = o['workflow_step']
    if wid then
      step = step_name(id, o)
      if preset(id, wid, step) then
        -- A step of wf_create, which recorded its parents just before adding it.
        local pre = redis.call('HMGET', DEP .. id, 'np', 'wb')
        if num(pre[1]) <= 0 or not pre[2] then return nil end
        redis.call('HSET', jk, 'wd', '1')
        return 'wp:' .. pre[2]
      end
      -- add_job with a workflow_id: a new step of the running workflow (accept checked).
      join(wid, step, id)
    end
    local first = add_parents(id, deps, wid, step, o['on_failure'])
    if not first then return nil end
    redis.call('HSET', jk, 'wd', '1')
    return 'wp:' .. first
  end
end)()
