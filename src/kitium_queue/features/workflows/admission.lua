(function()
  @PRELUDE@
  -- A job with parents still unfinished (released with a sibling, or due after a delay)
  -- waits behind its own blocker until its last parent finishes.
  return function(id, jk, opts, wd)
    if wd ~= '1' then return true end
    if num(redis.call('HGET', DEP .. id, 'np')) <= 0 then return true end
    admit_park('wn:' .. id)
    return false
  end
end)()
