--[[
  tn_registry.lua — compare-and-set of one tenant in the registry (TenantRegistry).

  KEYS[1]  <prefix>:tenants  HASH  tenant id -> its config as JSON, with its version
           (a removed tenant is a tombstone: {"removed": true, "version": ...})
  ARGV[1]  'create' | 'put' | 'drop'
  ARGV[2]  tenant id
  ARGV[3]  the new JSON ('drop': unused)
  ARGV[4]  'put': the version it replaces (the change was computed from it); 'drop':
           the version of the tombstone to delete
  Returns 'ok'; 'exists' (create: the tenant exists and is not removed); 'missing'
  (put: no such tenant, or removed); 'conflict' (put: another change came first; read
  it again and retry; drop: the entry is no longer that tombstone). Writes nothing
  unless 'ok'. 'drop' deletes a tombstone every queue has retired (install.py
  propagate): the entry goes only if it is still that tombstone.
]]
local cur = redis.call('HGET', KEYS[1], ARGV[2])
local live, version = false, nil
if cur then
  local ok, o = pcall(cjson.decode, cur)
  if ok and type(o) == 'table' then
    live = o['removed'] ~= true
    version = tonumber(o['version'])
  end
end
if ARGV[1] == 'create' then
  if live then return 'exists' end
elseif ARGV[1] == 'drop' then
  if not cur or live or version == nil or version ~= tonumber(ARGV[4]) then
    return 'conflict'
  end
  redis.call('HDEL', KEYS[1], ARGV[2])
  return 'ok'
elseif ARGV[1] == 'put' then
  if not live then return 'missing' end
  if version ~= tonumber(ARGV[4]) then return 'conflict' end
else
  return redis.error_reply('KQ_BAD_ARGUMENT tn_registry: unknown operation ' ..
    tostring(ARGV[1]) .. '; nothing was written')
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
return 'ok'
