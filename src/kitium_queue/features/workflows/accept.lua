(function()
  @PRELUDE@
  -- Refuses a job whose dependencies cannot be met: an unknown parent, one that failed
  -- (unless its on_failure is 'continue'), was skipped or cancelled, too many of them.
  -- A job with a workflow_id joins that workflow: refused unless it is running and the
  -- step name is free (steps wf_create writes are recorded already and pass). A copy
  -- (copy_of: accepted where it was added) passes: it is recorded as it is there.
  return function(id, name, opts, state)
    if copy_of(id) then return nil end
    local deps, wid, o = opts_of(opts)
    if not deps then return nil end
    if wid then
      local step = step_name(id, o)
      if preset(id, wid, step) then return nil end
      local why = join_refusal(id, wid, step)
      if why then return why end
    end
    return check_parents(deps, id)
  end
end)()
