--[[
  stream_swap.lua — finish the rewrite of the event stream: copy the entries added since
  the copy began, then put the copy in the stream's place (features.retention.stream).

  KEYS: the shared layout (lib_base.lua); uses events. The copy is <events>:rewrite
  (same hash tag).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]  where the entries not copied yet start: an XRANGE start ('(<last id copied>',
           or the first id to keep, or '-')
  ARGV[5]  most entries this call copies (clamped to 1..5000)
  ARGV[6]  the token of the rewrite's lease (leader:events-rewrite): when the lease no
           longer holds it (expired, another rewrite took it), nothing is written and
           { 'lost', 0 } is returned, so that a rewrite outlived by its lease never puts
           its copy in the stream's place (it would bring back entries another rewrite
           dropped meanwhile).

  Returns { 'ok', copied } (the copy replaced the stream; a stream left with no entry is
  emptied, not deleted), { 'more', n } (more than ARGV[5] entries to copy: copy them
  first, nothing written) or { 'gone', 0 } (the stream no longer exists: the copy is
  deleted).
  The stream keeps its last generated id: an entry added after the swap gets a later
  id than any entry a reader has seen, the ones left out included (a reader that goes
  on from the last id it read misses nothing).
]]
--@include lib_base

local tmp = K_EVENTS .. ':rewrite'
if redis.call('GET', PREFIX .. 'leader:events-rewrite') ~= ARGV[6] then
  return { 'lost', 0 }
end
if redis.call('EXISTS', K_EVENTS) == 0 then
  -- UNLINK: the copy may hold up to events maxlen entries, freed in the background.
  redis.call('UNLINK', tmp)
  return { 'gone', 0 }
end
local limit = arg_int(ARGV[5], 1000, 1, 5000)
local from = ARGV[4]
if from == nil or from == '' then from = '-' end
local tail = redis.call('XRANGE', K_EVENTS, from, '+', 'COUNT', limit + 1)
if #tail > limit then return { 'more', #tail } end
for i = 1, #tail do
  local e = tail[i]
  redis.call('XADD', tmp, e[1], unpack(e[2]))
end
if redis.call('EXISTS', tmp) == 1 then
  local info, last = redis.call('XINFO', 'STREAM', K_EVENTS), nil
  for i = 1, #info - 1, 2 do
    if info[i] == 'last-generated-id' then last = info[i + 1] end
  end
  local top = redis.call('XREVRANGE', tmp, '+', '-', 'COUNT', 1)[1][1]
  if last and last ~= top then
    -- An entry at that id, deleted at once: the copy's last generated id is the
    -- stream's (XSETID would do it on a server; an entry works on every backend).
    redis.call('XADD', tmp, last, 'kq', 'id')
    redis.call('XDEL', tmp, last)
  end
  redis.call('RENAME', tmp, K_EVENTS)
else
  redis.call('XTRIM', K_EVENTS, 'MAXLEN', 0)
end
return { 'ok', #tail }
