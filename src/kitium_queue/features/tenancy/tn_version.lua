--[[
  tn_version.lua — the next version of the tenant registry (TenantRegistry).

  KEYS[1]  <prefix>:{!access}:tenants:version  STRING  the last version handed out
  Returns { the new version, the Redis clock in ms }: the version is the clock, or the
  last version + 1 when that is not above it (changes within one ms, a clock set back). So a version is above every
  version handed out before, even when Redis lost its latest writes and the counter went
  back with them (a failover to a replica that missed them): a queue holding the copy of
  a lost change (tn_put.lua keeps only a higher version) takes the next change. A plain
  INCR would hand out the lost version again, which the queue ignored as not newer.
  A counter that is not an integer, or another Redis type: { 'damaged' }, nothing written.
]]
local cur = redis.pcall('GET', KEYS[1])
if type(cur) == 'table' then return { 'damaged' } end
local last = 0
if cur then
  if not (#cur <= 15 and string.match(cur, '^%d+$')) then return { 'damaged' } end
  last = tonumber(cur)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local v = last + 1
if now > v then v = now end
redis.call('SET', KEYS[1], string.format('%.0f', v))
return { v, now }
