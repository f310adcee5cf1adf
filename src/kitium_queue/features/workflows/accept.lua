(function()
  @PRELUDE@
  -- Refuses a job whose dependencies cannot be met: an unknown parent, one that failed
  -- (unless its on_failure is 'continue'), was skipped or cancelled, too many of them.
  return function(id, name, opts, state)
    local deps = opts_of(opts)
    if not deps then return nil end
    return check_parents(deps, id)
  end
end)()
