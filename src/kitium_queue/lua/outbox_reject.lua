--[[
  outbox_reject.lua — move entries a consumer gives up on to the dead stream now.

  KEYS[1] outbox STREAM, KEYS[2] dead STREAM.
  ARGV[1] queue key prefix, ARGV[2] group, ARGV[3] reason, ARGV[4..] entry ids.

  Returns how many entries were moved (ids not pending for the group are skipped).
  KQ_DAMAGED_KEY when the dead stream holds another type: nothing was written.
]]
--@include outbox_bury

local damaged = dead_damaged()
if damaged then return damaged end
local moved = 0
for i = 4, #ARGV do
  if bury(ARGV[2], ARGV[i], deliveries(ARGV[2], ARGV[i]), ARGV[3]) then moved = moved + 1 end
end
return moved
