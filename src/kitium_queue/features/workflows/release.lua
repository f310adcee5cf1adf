(function()
  @PRELUDE@
  -- A tracked job that completed releases its dependents; one that failed for good (or
  -- was removed before it finished) applies its on_failure policy. Same atomic step.
  -- `context`: what its run left for the jobs that follow it (run links), or nil.
  return function(id, jk, outcome, payload, context)
    if outcome ~= 'completed' and outcome ~= 'failed' and outcome ~= 'removed' then return end
    if redis.call('EXISTS', DEP .. id) == 0 then return end
    if outcome == 'completed' then
      step_done(id, payload, run_context(context))
    elseif outcome == 'failed' then
      step_failed(id, payload or 'failed (its lease expired too often)', run_context(context))
    else
      step_failed(id, 'removed before it finished')
    end
  end
end)()
