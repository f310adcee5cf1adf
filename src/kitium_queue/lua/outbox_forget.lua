--[[
  outbox_forget.lua — forget consumers of a group that hold nothing: every worker process
  reads under a name of its own (host:pid:random), and Redis keeps a consumer until it
  is deleted, so a fleet that comes and goes leaves one behind per process (about 280 B
  each, and an ever longer XINFO CONSUMERS).

  KEYS[1] outbox STREAM, KEYS[2] dead STREAM (unused).
  ARGV[1] queue key prefix, ARGV[2] group, ARGV[3..] consumer names.

  A consumer is deleted only when no entry is pending on it (checked here, in the same
  step as the delete: an entry it was handed since the caller looked keeps it). A live
  consumer deleted while it held nothing is made again by its next read. Returns how
  many were deleted.
]]
local group, gone = ARGV[2], 0
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], group, '-', '+', 1, ARGV[i])
  if #p == 0 then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], group, ARGV[i])
    gone = gone + 1
  end
end
return gone
