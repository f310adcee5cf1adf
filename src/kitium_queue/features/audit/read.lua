--[[
  read.lua — one page of the audit stream, bounded whatever was written there by hand
  (AuditReader.page in features/audit/read.py).

  KEYS[1] audit STREAM
  ARGV[1] start id (XRANGE syntax), ARGV[2] end id, ARGV[3] count, ARGV[4] '1' newest
  first, ARGV[5] the largest value kept (bytes): a longer one is cut to this size

  Replies:
    {'damaged', type}: KEYS[1] holds another type than a stream (nothing read)
    {'ok', id1, fields1, notes1, id2, ...}: fields: name, value, ... of the entry's known
      fields (first occurrence of each; values cut to ARGV[5] bytes); notes: what else
      is wrong with the entry, as name, detail pairs ('big' field bytes, 'dup' field,
      'extra' count of other fields)
]]
local t = redis.call('TYPE', KEYS[1])
if type(t) == 'table' then t = t['ok'] end
if t == 'none' then return { 'ok' } end
if t ~= 'stream' then return { 'damaged', t } end

local known = { n = true, prev = true, who = true, act = true, res = true, out = true,
  meta = true, kid = true, mac = true }
local cap = tonumber(ARGV[5])
local raw
if ARGV[4] == '1' then
  raw = redis.call('XREVRANGE', KEYS[1], ARGV[2], ARGV[1], 'COUNT', ARGV[3])
else
  raw = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', ARGV[3])
end
local out = { 'ok' }
for _, e in ipairs(raw) do
  local f, kept, notes, seen, extra = e[2], {}, {}, {}, 0
  for i = 1, #f, 2 do
    local name, value = f[i], f[i + 1]
    if not known[name] then
      extra = extra + 1
    elseif seen[name] then
      notes[#notes + 1] = 'dup'
      notes[#notes + 1] = name
    else
      seen[name] = true
      if #value > cap then
        notes[#notes + 1] = 'big'
        notes[#notes + 1] = name .. ' ' .. #value
        value = string.sub(value, 1, cap)
      end
      kept[#kept + 1] = name
      kept[#kept + 1] = value
    end
  end
  if extra > 0 then
    notes[#notes + 1] = 'extra'
    notes[#notes + 1] = tostring(extra)
  end
  out[#out + 1] = e[1]
  out[#out + 1] = kept
  out[#out + 1] = notes
end
return out
