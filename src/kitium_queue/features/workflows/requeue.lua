(function()
  @PRELUDE@
  -- A copy (copy_of: rg_apply.lua applies it) not started here whose parents were added
  -- at its source after it was copied (wait_for_dependencies there, wf_depend.lua): the
  -- copy's options now list them (depends_on), and the parents are recorded here as
  -- wf_depend.lua recorded them there, so the copy waits for them after a failover.
  -- Once: a copy whose parents are recorded (np), a step of a workflow (recorded when
  -- its copy came) and every job that is not a copy are left as they are.
  return function(id, jk, from)
    if copy_of(id) == nil then return end
    if from ~= 'waiting' and from ~= 'delayed' and from ~= 'pending' then return end
    local dk = DEP .. id
    local kind = key_type(dk)
    if kind ~= 'hash' and kind ~= 'none' then return end
    local d = fields(dk, 'np', 'st')
    if d[1] or TERMINAL[d[2] or ''] then return end
    local f = redis.pcall('HMGET', jk, 'st', 'o', 'p', 'q')
    if f.err or (f[1] or 'waiting') ~= from then return end
    local deps, wid, o = opts_of(f[2])
    if not deps or wid or #deps == 0 then return end
    local first = add_parents(id, deps, nil, nil, o['on_failure'])
    if not first then return end
    redis.call('HSET', jk, 'wd', '1')
    if from == 'waiting' and redis.call('ZREM', K_WAIT, id) == 1 then
      park(id, jk, int(wait_score(arg_int(f[3], 0, 0, 65535), num(f[4]))), 'wp:' .. first)
    end
  end
end)()
