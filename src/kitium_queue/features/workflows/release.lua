(function()
  @PRELUDE@
  -- A tracked job that completed releases its dependents; one that failed for good (or
  -- was removed before it finished) applies its on_failure policy (step_ended, which
  -- wf_heal.lua shares). Same atomic step. A copy's outcome (copy_of) does the same here.
  -- `context`: what its run left for the jobs that follow it (run links), or nil.
  -- A copy's step removed at its source by its workflow's cancellation (payload
  -- CANCELLED) is closed as cancelled, with its workflow (copy_cancelled).
  return function(id, jk, outcome, payload, context)
    local was = copy_of(id)
    if outcome ~= 'completed' and outcome ~= 'failed' and outcome ~= 'removed' then return end
    if redis.call('EXISTS', DEP .. id) == 0 then return end
    if not was and outcome == 'completed' then
      -- A record that failed before this job was created is an earlier job's under
      -- the same id (removed, the id used again): its completion is not a replay of
      -- that step (which would revive its workflow and rewrite its result).
      local d = fields(DEP .. id, 'st', 'f', 'jt')
      if d[1] == 'failed' and reused(id, d[2], d[3]) then return end
    end
    if was and outcome == 'removed' and payload == CANCELLED then
      copy_cancelled(id)
      return
    end
    step_ended(id, outcome, payload, run_context(context))
  end
end)()
