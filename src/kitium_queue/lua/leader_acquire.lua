--[[
  leader_acquire.lua — take the lease of a leader role if nobody holds it (leader.py).

  KEYS[1] lease STRING (<prefix>leader:<role>), KEYS[2] term counter STRING
  (<prefix>leader:<role>:term).
  ARGV[1] random token of this attempt, ARGV[2] lease ms.

  Returns { 1, new term } when acquired: the term (fencing number) grows with every
  acquisition; { 0, remaining ms of the current holder's lease } otherwise.
]]
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return { 1, redis.call('INCR', KEYS[2]) }
end
return { 0, redis.call('PTTL', KEYS[1]) }
