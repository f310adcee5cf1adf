(function()
  @PRELUDE@
  -- Refuses a job whose dependencies cannot be met: an unknown parent, one that failed
  -- (unless its on_failure is 'continue'), was skipped or cancelled, one whose id was
  -- used again while the earlier job's record is kept, too many of them; and a job whose
  -- own id has such a record.
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
    -- A new job (its id free) whose id has a dependency record: that of an earlier job
    -- under this id, kept until its retention ends (remove_job or retention took its
    -- job record). Recorded over it, the new job would take over the earlier one's
    -- state, result, dependents and step in its workflow.
    if redis.call('EXISTS', DEP .. id) == 1 then
      return 'job id ' .. id .. ' was used again: the dependency record ' .. DEP .. id ..
        ' of the earlier job with that id is kept until its retention ends, and a job ' ..
        'with dependencies or a workflow cannot be recorded over it; choose another job id'
    end
    return check_parents(deps, id)
  end
end)()
