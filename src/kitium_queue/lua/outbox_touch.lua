--[[
  outbox_touch.lua — a consumer still handling entries keeps them: their idle time starts
  again from now, so no other consumer's XAUTOCLAIM pass (entries idle claim_idle_ms)
  takes them over while it works, however long the handling takes.

  KEYS[1] outbox STREAM, KEYS[2] dead STREAM (unused).
  ARGV[1] queue key prefix, ARGV[2] group, ARGV[3] consumer, ARGV[4..] entry ids.

  Only entries still pending on this consumer are touched: one acknowledged meanwhile,
  or already taken over by another consumer, is left as it is. XAUTOCLAIM ... JUSTID
  from the entry's own id (it is pending: the first one found) resets its idle time
  without counting a delivery. Returns how many entries were touched.
]]
local group, me, touched = ARGV[2], ARGV[3], 0
for i = 4, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], group, ARGV[i], ARGV[i], 1)
  if p[1] and p[1][1] == ARGV[i] and p[1][2] == me then
    redis.call('XAUTOCLAIM', KEYS[1], group, me, 0, ARGV[i], 'COUNT', 1, 'JUSTID')
    touched = touched + 1
  end
end
return touched
