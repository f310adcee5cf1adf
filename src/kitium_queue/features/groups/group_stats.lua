--[[
  group_stats.lua — one FIFO message group, read atomically (kitium_queue.features.groups).

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]  group id
  The manager's declarations (default concurrency, max_group_size) are compiled in.

  Returns { settings, counts, turns, head }:
    settings  { paused '0'|'1', concurrency, max_group_size (0 = none), rate max (0 =
              none), rate duration ms, known '0'|'1' (the group has a hash or is indexed) }
    counts    { unfinished (n), in line, held (paused or over the rate), completed,
              failed }
    turns     up to 100 jobs holding a turn: { id, st, worker, started ms, attempts,
              created ms, due ms }
    head      { id, created ms } of the next job of the line, or {}
  KQ_BAD_STATE when a key of the group holds another type (damaged by hand).
]]
--@include lib_base
--@include lib_parking
@PRELUDE@

local g = ARGV[4]
local gkey = PREFIX .. 'grp:' .. g
-- A key of the group damaged by hand (another type): said, not a bare WRONGTYPE.
local bad = group_damage(g)
if bad then return redis.error_reply(bad) end
local f = redis.call('HMGET', gkey, 'paused', 'conc', 'max', 'rlm', 'rld', 'n', 'done', 'fail')
local known = redis.call('EXISTS', gkey) == 1 or redis.call('ZSCORE', PREFIX .. 'groups', g)
local settings = {
  f[1] == '1' and '1' or '0',
  int(conc_of(f[2])),
  int(arg_int(f[3], DEFAULT_MAX, 0, 1000000000)),
  int(arg_int(f[4], 0, 0, 1000000000)),
  int(arg_int(f[5], 0, 0, MAX_MS)),
  known and '1' or '0',
}
local line = PREFIX .. 'parked:g:' .. g
local held = redis.call('ZCARD', PREFIX .. 'parked:gh:' .. g) +
  redis.call('ZCARD', PREFIX .. 'parked:gr:' .. g)
local counts = { int(num(f[6])), redis.call('ZCARD', line), held, int(num(f[7])), int(num(f[8])) }
local turns = {}
local ids = redis.call('SRANDMEMBER', PREFIX .. 'grp-run:' .. g, 100)
for i = 1, #ids do
  local j = redis.pcall('HMGET', job_key(ids[i]), 'st', 'w', 'ps', 'a', 'ts', 'due')
  if j.err then j = {} end
  turns[#turns + 1] = { ids[i], j[1] or '', j[2] or '', j[3] or '', j[4] or '', j[5] or '',
    j[6] or '' }
end
local head = {}
local first = redis.call('ZRANGE', line, 0, 0)
if first[1] then
  local ts = redis.pcall('HGET', job_key(first[1]), 'ts')
  if type(ts) ~= 'string' then ts = '' end
  head = { first[1], ts }
end
return { settings, counts, turns, head }
