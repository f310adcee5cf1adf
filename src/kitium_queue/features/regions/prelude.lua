  -- Shared by the fragments of the regions feature (features/regions/lua.py puts it in
  -- each). The region record is <prefix>rg (region.lua).
  local RG = PREFIX .. 'rg'
  local role = nil
  -- The epoch of this copy as the primary, or false when it is not the primary. Read
  -- once per script call: the record does not change while a script runs.
  local function primary_epoch()
    if role == nil then
      local f = redis.call('HMGET', RG, 'self', 'primary', 'epoch')
      if f[1] and f[1] == f[2] and f[3] then role = f[3] else role = false end
    end
    return role
  end
