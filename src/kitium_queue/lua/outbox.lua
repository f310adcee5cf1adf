--[[
  outbox.lua — fragment: append follow-up work to the queue's outbox in the same atomic
  step as the transition that includes it (`--@include outbox`, after `--@include common`
  or on its own: it needs nothing but ARGV[1]).

  Keys (all derived from ARGV[1], the queue's key prefix "kq:{name}:", like job keys, so
  they share the queue's hash tag and stay cluster-safe):
    <prefix>outbox           STREAM  the outbox; entries carry 't' (topic) + fields
    <prefix>outbox:overflow  STRING  entries written while the outbox was at its cap
    <prefix>meta             HASH    field 'outbox_cap' (unset: OUTBOX_DEFAULT_CAP)

  outbox_add(topic, field1, value1, ...) -> entry id, over_cap (boolean)

  The outbox is never trimmed here (no MAXLEN): entries are removed only by the
  housekeeping trim once every consumer group acknowledged them. The cap is a report,
  not a limit: an entry is always written, because the transition that produces it has
  already been decided in this same script and dropping its follow-up work would lose
  it silently. An entry written while the stream already holds `cap` entries increments
  <prefix>outbox:overflow, which stats() and a warning report (consumers are behind, or a
  group is stuck and holds back the trim). Field names starting with '_' are reserved
  for dead-letter metadata.

  Never fails, so that a transition including it never fails after its own writes:
  when <prefix>outbox holds another type of key (written by hand), the entry cannot be
  written; it is counted in <prefix>outbox:unwritten (stats() and the housekeeping
  warning report it) and outbox_add returns false. A damaged cap or counter reads as
  the default.
]]
local OUTBOX_KEY = ARGV[1] .. 'outbox'
local OUTBOX_DEFAULT_CAP = 1000000
local outbox_cap_value = nil  -- read at most once per script call

local function outbox_cap()
  if outbox_cap_value == nil then
    local raw = redis.pcall('HGET', ARGV[1] .. 'meta', 'outbox_cap')
    local v = type(raw) == 'string' and tonumber(raw) or nil
    if v == nil or v ~= v or v < 1 then v = OUTBOX_DEFAULT_CAP end
    outbox_cap_value = v
  end
  return outbox_cap_value
end

local function outbox_add(topic, ...)
  local n = redis.pcall('XLEN', OUTBOX_KEY)
  if type(n) ~= 'number' then
    redis.pcall('INCR', ARGV[1] .. 'outbox:unwritten')
    return false, false
  end
  local over = n >= outbox_cap()
  local id = redis.call('XADD', OUTBOX_KEY, '*', 't', topic, ...)
  if over then redis.pcall('INCR', ARGV[1] .. 'outbox:overflow') end
  return id, over
end
