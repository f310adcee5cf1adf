(function()
  @PRELUDE@
  local QUEUE = string.match(PREFIX, '{(.*)}') or PREFIX

  -- Refuses, before anything of the job is written: a job of a tenant this queue does
  -- not know (never created, or removed), a job whose region the tenant may not use,
  -- and (quotas enforced) a job that would take the tenant past its max_queue_size
  -- (its unfinished jobs in this queue), or while that count is damaged (not an
  -- integer: count_of in prelude.lua). Reads the count each time: the enqueue fragment of the job before,
  -- in the same call, may have raised it.
  return function(id, name, opts, state)
    local t, region = tenant_opts(opts)
    if not t then return nil end
    -- pcall: a tenant key of another type (written by hand) refuses the job, never
    -- lets it in without its tenant's quota (fail closed).
    local f = redis.pcall('HMGET', TN .. t, 'on', 'mqs', 'n', 'ar')
    if f.err then
      return "the record of tenant '" .. t .. "' in queue '" .. QUEUE .. "' (" .. TN ..
        t .. ') holds another type (damaged): the job was not added. Delete that key ' ..
        'and run TenantRegistry.sync() to copy the tenant into the queue again'
    end
    if f[1] ~= '1' then
      return "tenant '" .. t .. "' does not exist in queue '" .. QUEUE .. "' (never " ..
        'created, or removed): the job was not added. Create it with create_tenant ' ..
        '(on the AccessControlManager where access control is on, else on the ' ..
        'TenantRegistry), or drop tenant_id'
    end
    local ar = f[4]
    if region and ar and ar ~= '' and not string.find(ar, ',' .. region .. ',', 1, true) then
      return "tenant '" .. t .. "' may not use region '" .. region .. "' (its " ..
        'allowed_regions: ' .. string.sub(ar, 2, -2) .. '): the job was not added'
    end
    local max = arg_int(f[2], 0, 0, 1000000000)
    local n = count_of(f[3])
    if QUOTAS and max > 0 and not n then
      -- Damaged: read as 0 it would let the tenant past its quota until the count caught
      -- up. The tenant's copy recounts it (tn_put.lua).
      return "the count of unfinished jobs of tenant '" .. t .. "' in queue '" .. QUEUE ..
        "' (field n of " .. TN .. t .. ') holds ' .. string.format('%q', string.sub(f[3], 1, 40)) ..
        ', not a count (damaged outside kitium-queue): the job was not added, so that ' ..
        'its max_queue_size of ' .. max .. ' holds. TenantRegistry.sync() recounts it ' ..
        '(workers do within 30 s); then add the job again'
    end
    if QUOTAS and max > 0 and n >= max then
      return 'KQ_QUOTA_EXCEEDED\t' .. t .. '\tmax_queue_size\t' .. max .. "\ttenant '" ..
        t .. "' is at its max_queue_size of " .. max .. ' in queue ' .. "'" .. QUEUE ..
        "' (" .. int(n) .. ' unfinished jobs): the job was not added. Add it again ' ..
        'once some of them finished, or raise the quota (update_tenant on the ' ..
        'AccessControlManager where access control is on, else on the TenantRegistry)'
    end
    return nil
  end
end)()
