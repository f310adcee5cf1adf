--[[
  leader_acquire.lua — take the lease of a leader role if nobody holds it (leader.py).

  KEYS[1] lease STRING (<prefix>leader:<role>), KEYS[2] term counter STRING
  (<prefix>leader:<role>:term).
  ARGV[1] random token of this attempt, ARGV[2] lease ms.

  Returns { 1, new term } when acquired: the term (fencing number) grows with every
  acquisition; { 0, remaining ms of the current holder's lease } otherwise.
  Damaged keys (written outside kitium-queue): a term counter holding another type or
  something that is not an integer (its INCR would fail after the lease was taken, and
  the lease be held by nobody until it expired), or a lease key of another type (nobody
  could ever take it): the reply is KQ_DAMAGED_KEY <found> <expected> <key>, and
  nothing was written.
]]
local function damaged(key, found, expected)
  return redis.error_reply('KQ_DAMAGED_KEY ' .. found .. ' ' .. expected .. ' ' .. key)
end

local term = redis.pcall('GET', KEYS[2])
if type(term) == 'table' then
  return damaged(KEYS[2], redis.call('TYPE', KEYS[2])['ok'], 'integer')
end
-- INCR takes an integer without sign or leading zeros (lib_base.lua check_keys).
if term and not (#term <= 15 and (term == '0' or string.match(term, '^%-?[1-9]%d*$'))) then
  return damaged(KEYS[2], 'string', 'integer')
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return { 1, redis.call('INCR', KEYS[2]) }
end
local left = redis.call('PTTL', KEYS[1])
-- A lease always has an expiry; a key without one may be of another type.
if left == -1 then
  local t = redis.call('TYPE', KEYS[1])['ok']
  if t ~= 'string' then return damaged(KEYS[1], t, 'string') end
end
return { 0, left }
