--[[
  outbox_bury.lua — fragment of the outbox consumer scripts (outbox_reclaim.lua,
  outbox_reject.lua): move an entry of a consumer group to the dead stream.

  KEYS[1] outbox STREAM, KEYS[2] dead STREAM (<prefix>outbox:dead).

  dead_damaged() -> the KQ_DAMAGED_KEY reply when the dead stream holds another type
  deliveries(group, id) -> how many times the group delivered the entry (0: not pending)
  bury(group, id, deliveries, reason) -> true when this call moved it

  bury acknowledges the entry for the group and copies it to the dead stream with
  '_id', '_group', '_deliveries' and '_reason' ahead of its own fields. Only the call whose
  XACK removed it from the group's pending list writes the copy, so racing consumers
  bury an entry once. Other groups are unaffected: they still have their own delivery.
  Returns nothing itself (a fragment).
]]
-- The KQ_DAMAGED_KEY reply when the dead stream holds another type (written by hand):
-- checked before the script's first write, since bury's XADD to it would fail after the
-- entry was acknowledged (lost to its group, in no dead stream). Else nil.
local function dead_damaged()
  local t = redis.call('TYPE', KEYS[2])['ok']
  if t ~= 'none' and t ~= 'stream' then
    return redis.error_reply('KQ_DAMAGED_KEY ' .. t .. ' stream ' .. KEYS[2])
  end
  return nil
end

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
