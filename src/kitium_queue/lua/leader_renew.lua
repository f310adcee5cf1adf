--[[
  leader_renew.lua — compare-and-renew a leader lease.

  KEYS[1] lease STRING. ARGV[1] the holder's token, ARGV[2] lease ms.

  Returns 1 when the lease still held the token and now runs ARGV[2] ms from now;
  0 when it expired or belongs to someone else (the caller must stop leading).
]]
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
