--[[
  outbox_bury.lua — fragment of the outbox consumer scripts (outbox_reclaim.lua,
  outbox_reject.lua): move an entry of a consumer group to the dead stream.

  KEYS[1] outbox STREAM, KEYS[2] dead STREAM (<prefix>outbox:dead).

  deliveries(group, id) -> how many times the group delivered the entry (0: not pending)
  bury(group, id, deliveries, reason) -> true when this call moved it

  bury acknowledges the entry for the group and copies it to the dead stream with
  '_id', '_group', '_deliveries' and '_reason' ahead of its own fields. Only the call whose
  XACK removed it from the group's pending list writes the copy, so racing consumers
  bury an entry once. Other groups are unaffected: they still have their own delivery.
  Returns nothing itself (a fragment).
]]
local function deliveries(group, id)
  local p = redis.call('XPENDING', KEYS[1], group, id, id, 1)
  if p[1] then return tonumber(p[1][4]) end
  return 0
end

local function bury(group, id, n, reason)
  if redis.call('XACK', KEYS[1], group, id) == 0 then return false end
  local e = redis.call('XRANGE', KEYS[1], id, id)
  local fields = {}
  if e[1] then fields = e[1][2] end
  -- unpack last: in the middle of an argument list Lua would keep only its first value
  redis.call('XADD', KEYS[2], '*', '_id', id, '_group', group, '_deliveries', n,
    '_reason', reason, unpack(fields))
  return true
end
