--[[
  tn_present.lua — whether a registered queue is still there (read only).

  KEYS  the queue's keys of which one at least exists while it is there (keys.py
        presence: its job states, meta, events, counters, parked jobs, schedules,
        tenants index, declarations and registration), all under its hash tag.
  Returns how many of them exist: 0 when the queue's keys were deleted.
]]
return redis.call('EXISTS', unpack(KEYS))
