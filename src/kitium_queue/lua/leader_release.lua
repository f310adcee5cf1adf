--[[
  leader_release.lua — compare-and-delete a leader lease (graceful step-down).

  KEYS[1] lease STRING. ARGV[1] the holder's token.

  Returns 1 when the lease was ours and is deleted, 0 otherwise (untouched).
]]
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
