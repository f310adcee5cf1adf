--[[
  rg_export.lua — read jobs of this copy as replication entries (the layout
  features/regions/lua.py ENTRY: 20 fields per job), for a copy elsewhere to apply with
  rg_apply.lua: sync acknowledgements, replicate_job, catching up a new primary from its
  peers, and the replicator (which reads the job an 'add' entry of the outbox names).

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4..] job ids, at most 1000 (more: KQ_BAD_ARGUMENT).

  Returns 20 fields per id, in order: op 'put' and the job as it is here, or op 'gone'
  (no record, or a damaged one) with the other fields empty. Writes nothing.
]]
--@include lib_base

if #ARGV - 3 > BATCH_MAX then
  return bad_arg('rg_export', 'at most ' .. BATCH_MAX .. ' ids per call, got ' .. (#ARGV - 3))
end
local PAYLOAD_OF = { completed = 'r', failed = 'e', dlq = 'e' }
local out = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local jk = job_key(id)
  local f = redis.pcall('HMGET', jk, 'n', 'd', 'o', 'p', 'q', 'ts', 'st', 'due', 'a', 'ep',
    'ik', 'r', 'e', 'f')
  if f.err or not f[1] then
    out[#out + 1] = 'gone'
    out[#out + 1] = id
    for _ = 3, 20 do out[#out + 1] = '' end
  else
    local st = f[7] or 'waiting'
    local lifo = '0'
    if num(f[5]) < 0 then lifo = '1' end
    local ttl = 0
    if f[11] then ttl = redis.call('PTTL', PREFIX .. 'idem:' .. f[11]) end
    if ttl < 0 then ttl = 0 end
    local pl = ''
    if st == 'completed' then pl = f[12] or '' elseif PAYLOAD_OF[st] then pl = f[13] or '' end
    local row = { 'put', id, f[1], f[2] or '', f[3] or '', f[4] or '0', lifo, f[6] or '',
      st, f[8] or '', f[9] or '0', f[10] or '', f[11] or '', int(ttl), pl, f[14] or '', '',
      '', '', '' }
    for _, v in ipairs(row) do out[#out + 1] = v end
  end
end
return out
