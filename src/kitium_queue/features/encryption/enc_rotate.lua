--[[
  enc_rotate.lua — make another key the queue's current encryption key, atomically with
  the start of a re-encryption pass (kitium_queue.features.encryption).

  Redis holds key ids and metadata only, never key material:
    <prefix>enc           HASH  current (key id), previous, rotated_at (ms), rotations
    <prefix>enc:keys      HASH  key id -> first seen (ms)
    <prefix>enc:rotation  HASH  the latest rotation and the progress of its pass

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]  mode: 'init' (set the current key if none is set) | 'rotate'
  ARGV[5]  expected current key id ('' = none; rotate only)
  ARGV[6]  new current key id
  Returns { 'ok' | 'stale' | 'same', current key id, rotation number }, or
  { 'damaged', key, what } (nothing written) when <prefix>enc or <prefix>enc:keys holds
  another type, or (rotate) the rotations counter is not an integer.
  Checks first, writes last.
]]
--@include lib_base

local meta, keys, rot = PREFIX .. 'enc', PREFIX .. 'enc:keys', PREFIX .. 'enc:rotation'
local mode, expect, new = ARGV[4], ARGV[5], ARGV[6]
if (mode ~= 'init' and mode ~= 'rotate') or not new or new == '' or #new > 64 then
  return bad_arg('enc_rotate', 'mode must be init or rotate, with a key id of 1..64 bytes')
end
for _, k in ipairs({ meta, keys }) do
  local t = key_type(k)
  if t ~= 'none' and t ~= 'hash' then return { 'damaged', k, 'it holds a ' .. t .. ', not a hash' } end
end
local f = redis.call('HMGET', meta, 'current', 'rotations')
local cur, n = f[1] or '', 0
if f[2] then
  -- tonumber() would take '1e999', 'inf' or 'nan': a count that never matches again.
  if not string.match(f[2], '^%d+$') or #f[2] > 15 then
    if mode == 'rotate' then
      return { 'damaged', meta, 'its rotations counter is not an integer' }
    end
  else
    n = tonumber(f[2])
  end
end
if mode == 'init' then
  if cur ~= '' then return { 'stale', cur, n } end
  redis.call('HSETNX', keys, new, NOW_S)
  redis.call('HSET', meta, 'current', new)
  return { 'ok', new, n }
end
if cur ~= expect then return { 'stale', cur, n } end
if cur == new then return { 'same', cur, n } end
n = n + 1
redis.call('HSETNX', keys, new, NOW_S)
redis.call('HSET', meta, 'current', new, 'previous', cur, 'rotated_at', NOW_S, 'rotations', n)
redis.call('DEL', rot)
redis.call('HSET', rot, 'n', n, 'state', 'running', 'from', cur, 'to', new,
  'rotated_at', NOW_S, 'updated_at', NOW_S, 'round', 0, 'scanned', 0, 'total', 0,
  'reencrypted', 0, 'conflicts', 0, 'undecryptable', 0, 'clean_rounds', 0)
return { 'ok', new, n }
