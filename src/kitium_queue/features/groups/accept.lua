(function()
  @PRELUDE@
  -- max_group_size, atomically with the enqueue: a job that would make the group hold
  -- more unfinished jobs than its limit is refused before anything of it is written.
  -- Reads the count each time (the enqueue fragment of the job before, in the same call,
  -- may have raised it).
  return function(id, name, opts, state)
    local g = group_of(opts)
    if not g then return nil end
    -- pcall: a group key of another type (written by hand) refuses the job, never lets
    -- it in outside its group's order (the enqueue fragment could not mark it).
    local f = redis.pcall('HMGET', GP .. g, 'max', 'n')
    if f.err then
      return 'message group ' .. g .. ': its key ' .. GP .. g .. ' holds another type ' ..
        '(damaged by hand?); the job was not added. Delete or repair that key, then ' ..
        'add the job again'
    end
    local max = arg_int(f[1], DEFAULT_MAX, 0, 1000000000)
    local n = num(f[2])
    if max > 0 and n >= max then
      return 'message group ' .. g .. ' is full: it holds ' .. int(n) ..
        ' unfinished jobs and its max_group_size is ' .. max .. '; the job was not ' ..
        'added. Add it again once some of them finished, or raise max_group_size'
    end
    return nil
  end
end)()
