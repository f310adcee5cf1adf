--[[
  outbox_put.lua — append one entry to the outbox (Outbox.add in Python).

  KEYS[1] outbox STREAM, KEYS[2] dead STREAM (unused; the outbox scripts share KEYS).
  ARGV[1] queue key prefix ("kq:{name}:"), ARGV[2] topic, ARGV[3..] field, value pairs.

  Returns { entry id, 1 when the outbox was already at its cap (counted as overflow)
  else 0 }, or { '', 0 } when the outbox key holds another type (nothing written).
]]
--@include outbox

local id, over = outbox_add(ARGV[2], unpack(ARGV, 3))
if not id then return { '', 0 } end
if over then return { id, 1 } end
return { id, 0 }
