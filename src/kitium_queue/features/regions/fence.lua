(function()
  -- Multi-region fence (kitium_queue.features.regions): only the primary copy takes new
  -- jobs and hands jobs out, and only while its lease (granted by a majority of regions,
  -- region.lua) runs. A copy cut off from the majority stops within the lease; a copy
  -- that learnt of a later epoch (adopt) stops at once.
  local RG = PREFIX .. 'rg'
  return function(op)
    local f = redis.call('HMGET', RG, 'self', 'primary', 'epoch', 'lease', 'down')
    if not f[1] then
      return 'this copy of the queue has no region record (GlobalQueueManager.initialize ' ..
        'writes it): it takes no work until it is part of the regions'
    end
    if f[1] ~= f[2] then
      return 'region ' .. f[1] .. ' is not the primary (epoch ' .. (f[3] or '?') ..
        ': the primary is ' .. (f[2] or 'not known here') .. ')'
    end
    local lease = tonumber(f[4]) or 0
    if lease < 0 then return nil end
    if f[5] and f[5] == f[3] then
      return 'region ' .. f[1] .. ' stepped down in epoch ' .. f[3] ..
        ' (a failover to another region is under way)'
    end
    if NOW >= lease then
      return 'the lease of region ' .. f[1] .. ' as primary (epoch ' .. (f[3] or '?') ..
        ') ran out ' .. int(NOW - lease) .. ' ms ago: no majority of regions confirmed it'
    end
    return nil
  end
end)()
