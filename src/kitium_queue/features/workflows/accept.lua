(function()
  @PRELUDE@
  -- Refuses a job whose dependencies cannot be met: an unknown parent, one that failed
  -- (unless its on_failure is 'continue'), was skipped or cancelled, too many of them.
  -- A job with a workflow_id joins that workflow: refused unless it is running and the
  -- step name is free (steps wf_create writes are recorded already and pass).
  return function(id, name, opts, state)
    local deps, wid, o = opts_of(opts)
    if not deps then return nil end
    if wid then
      local why = join_refusal(id, wid, step_name(id, o))
      if why then return why end
    end
    return check_parents(deps, id)
  end
end)()
