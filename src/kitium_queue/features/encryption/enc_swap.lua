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
           Guard 'L': key is a job's log list ('logs:<id>'), field its job's record
           ('job:<id>', skipped while active: its worker appends), the value read and the
           new value the whole list, each line as '<length>:<bytes>'
           (progresslogs.pack_lines): the list is rebuilt only if it holds exactly the
           lines read (its time to live, if any, kept).
  Returns { 'ok', {result per group} }: 1 replaced, 0 changed or gone since it was read,
  2 skipped (active: its result will be written under the current key).
]]
--@include lib_base

local function packed_lines(lines)
  local parts = {}
  for i = 1, #lines do
    parts[i] = #lines[i] .. ':' .. lines[i]
  end
  return table.concat(parts)
end

local function unpacked_lines(text)
  local out, at = {}, 1
  while at <= #text do
    local colon = string.find(text, ':', at, true)
    local size = tonumber(string.sub(text, at, colon - 1))
    out[#out + 1] = string.sub(text, colon + 1, colon + size)
    at = colon + size + 1
  end
  return out
end

-- A log list swapped whole (guard 'L'): 1, 0 or 2 as for a field.
local function swap_lines(key, record, old, new)
  if redis.call('HGET', record, 'st') == 'active' then
    return 2
  end
  if packed_lines(redis.call('LRANGE', key, 0, -1)) ~= old then
    return 0
  end
  local ttl = redis.call('PTTL', key)
  local lines = unpacked_lines(new)
  redis.call('DEL', key)
  for at = 1, #lines, 1000 do
    redis.call('RPUSH', key, unpack(lines, at, math.min(at + 999, #lines)))
  end
  if ttl > 0 then
    redis.call('PEXPIRE', key, ttl)
  end
  return 1
end

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
  local cur = guard ~= 'L' and redis.call('HGET', key, field)
  if guard == 'L' then
    res = swap_lines(key, PREFIX .. field, old, new)
  elseif cur then
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
