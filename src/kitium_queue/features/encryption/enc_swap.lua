--[[
  enc_swap.lua — replace stored ciphertexts by their re-encryption, each only if it is
  unchanged (compare-and-set) and its record may be rewritten now
  (kitium_queue.features.encryption, rotation pass).

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]  rotation number the pass works for: nothing is written when another rotation
           started meanwhile (the reply is then { 'stale' }).
  ARGV[5..] groups of 5: key (relative to the prefix: 'job:<id>', 'schedule:<id>', ...),
           field, the value read (compared whole), new value, guard ('a' = skip while the record's
           state is 'active', '-' = none). At most 1000 groups.
  Returns { 'ok', {result per group} }: 1 replaced, 0 changed or gone since it was read,
  2 skipped (active: its result will be written under the current key).
]]
--@include lib_base

local n = (#ARGV - 4) / 5
if #ARGV < 4 or (#ARGV - 4) % 5 ~= 0 or n > BATCH_MAX then
  return bad_arg('enc_swap', 'expected at most ' .. BATCH_MAX .. ' groups of 5 after ARGV[4]')
end
if redis.call('HGET', PREFIX .. 'enc:rotation', 'n') ~= ARGV[4] then
  return { 'stale' }
end
local out = {}
for i = 5, #ARGV, 5 do
  local key, field, old, new, guard = PREFIX .. ARGV[i], ARGV[i + 1], ARGV[i + 2],
    ARGV[i + 3], ARGV[i + 4]
  local res = 0
  local cur = redis.call('HGET', key, field)
  if cur then
    if guard == 'a' and redis.call('HGET', key, 'st') == 'active' then
      res = 2
    elseif cur == old then
      redis.call('HSET', key, field, new)
      res = 1
    end
  end
  out[#out + 1] = res
end
return { 'ok', out }
