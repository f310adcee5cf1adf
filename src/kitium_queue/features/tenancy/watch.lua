(function()
  -- Fair dispatch: the first admission check of all (lua.py WATCH_ORDER), so that it
  -- sees every candidate of a tenant, also one that the check of a feature before the
  -- tenancy check parks (a job not ready, or not at the front of its group's line). It
  -- lets every job pass: it only tells the tenancy check (admission.lua, through
  -- SLOT_SCRATCH) which candidates hold a dispatch ticket, so that a holder another
  -- feature's check takes out of wait gives its ticket back in the same call (or, left
  -- in wait, holds no free slot of its tenant); and which candidate came last (one
  -- without a tenant too): the one a check may stop the claim at.
  return function(id, jk, opts, tn)
    local tenancy = SLOT_SCRATCH['multi-tenancy']
    if tenancy then tenancy.watch(id, tn) end
    return true
  end
end)()
