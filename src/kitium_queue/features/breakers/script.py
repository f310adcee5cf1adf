"""The breaker script: operators' commands and reads of one circuit breaker (``put``,
``get``, ``acquire``, ``record``, ``reset``, ``open``, ``delete``) and the ``sweep`` of
the ``breaker-events`` leader, over the library and keys of ``lua.py``."""

from __future__ import annotations

from typing import Final

from .lua import LIB

__all__ = ["SCRIPT", "SCRIPT_NAME"]

#: The name the breaker script is registered under in the queue's script registry.
SCRIPT_NAME: Final = "breaker"

# The breaker script: ARGV[4] = operation, ARGV[5] = breaker id, then per operation.
# Operators' commands and reads, not the hot path: they check the type of every key they
# write before their first write (a key written by hand never leaves a half-done
# change), and a view reports what it found damaged.
SCRIPT: Final = (
    "--@include lib_slots\n"
    + LIB
    + r"""
local op, b = ARGV[4], ARGV[5]
if type(b) ~= 'string' or b == '' then return bad_arg('breaker', 'no breaker id') end
local CB_IDS = CB .. 'ids'

-- The type of key k when it is neither `want` nor absent, else nil.
local function wrong_type(k, want)
  local t = redis.call('TYPE', k)
  t = type(t) == 'table' and t.ok or t
  if t == want or t == 'none' then return nil end
  return t
end

local function joined(a, b2)
  if a == '' then return b2 end
  return a .. '; ' .. b2
end

-- What is damaged in breaker s's hash: fields that hold no valid value (each read as
-- its default), '' when none.
local RANGES = { { 'since', 0, MAX_MS }, { 'until', 0, MAX_MS }, { 'min', 1, 1000000000 },
  { 'to', 1, MAX_DELAY_MS }, { 'win', 1000, MAX_DELAY_MS }, { 'pr', 1, 1000 },
  { 'pto', 1, MAX_DELAY_MS }, { 'po', 0, 1000 }, { 'pok', 0, 1000 }, { 'pdl', 0, MAX_MS },
  { 'n', 0, MAX_MS }, { 'ca', 0, MAX_MS } }
local function damage(s)
  local h, bad = s.raw, {}
  if not STATES[h.st] then bad[#bad + 1] = 'st' end
  local pct = tonumber(h.pct)
  if h.pct ~= nil and (pct == nil or pct ~= pct or pct <= 0 or pct > 100) then
    bad[#bad + 1] = 'pct'
  end
  for _, r in ipairs(RANGES) do
    local x = h[r[1]]
    if x ~= nil then
      x = tonumber(x)
      if x == nil or x ~= x or x < r[2] or x > r[3] or x ~= math.floor(x) then
        bad[#bad + 1] = r[1]
      end
    end
  end
  local note = ''
  if #bad > 0 then
    note = 'field(s) ' .. table.concat(bad, ', ') .. ' of ' .. s.key .. ' hold no valid '
      .. 'value (each read as its default). Repair: reset() rewrites the state, '
      .. 'create_breaker(..., replace=True) the definition'
  end
  if s.odd then
    note = joined(note, 'field(s) ' .. table.concat(s.odd, ', ') .. ' of ' .. s.key
      .. ' hold times no change of state writes (a state entered ahead of the clock, or '
      .. 'open longer than any timeout): read as entered now, and open for its timeout. '
      .. 'Repair: reset()')
  end
  if s.st == 'half-open' and s.po > 0 and s.pdl == 0 then
    note = joined(note, 'the probe deadline (pdl) of ' .. s.key .. ' is lost while '
      .. int(s.po) .. ' probe(s) are out: they are overdue probe_timeout after the '
      .. 'half-open start. Repair: reset()')
  end
  return note
end

-- A breaker acting closed (its record of another type, or its state no state) holds
-- nothing: what it held is let go when it is read.
local function view(s)
  if s.bad then
    cb_let_go(s.blocker)
    return { 'damaged', s.bad }
  end
  if s.st == 'closed' then cb_let_go(s.blocker) end
  local note = damage(s)
  local R, F = cb_window(s, 0, 0)
  -- A size read (ZCARD, SCARD) of a key that may hold another Redis type: 0 then, and
  -- `what` joined to the note.
  local function size(cmd, key, what)
    local n = redis.pcall(cmd, key)
    if type(n) == 'number' then return n end
    note = joined(note, key .. ' holds another Redis type, ' .. what)
    return 0
  end
  local held = size('ZCARD', PREFIX .. 'parked:' .. s.blocker,
    'not a sorted set: held jobs are not counted')
  local probes = size('SCARD', CB .. 'p:' .. s.id,
    'not a set (replaced at the next probe)')
  return { 'ok', s.st, int(s.since), int(s.untl), int(s.po), int(s.pok), int(s.pdl),
    int(R), int(F), int(held), int(probes), int(s.n), s.why, s.jn, tostring(s.pct),
    int(s.min), int(s.to), int(s.win), int(s.pr), int(s.pto), int(s.ca), note }
end

if op == 'put' then
  -- ARGV[6..12]: job name ('' = none), pct, min, timeout, window, probes, probe timeout;
  -- ARGV[13]: '1' = replace an existing definition (its state is kept; a record of
  -- another type is defined again, closed).
  local jn, pct = ARGV[6], tonumber(ARGV[7])
  if pct == nil or pct ~= pct or pct <= 0 or pct > 100 then
    return bad_arg('breaker', 'percentage must be in (0, 100]')
  end
  local replace = ARGV[13] == '1'
  local t = wrong_type(CB_IDS, 'zset')
  if t then
    return { 'damaged', CB_IDS .. ' holds a ' .. t .. ', not a sorted set. Repair: delete '
      .. 'that key, then create_breaker(..., replace=True) each breaker to list it again' }
  end
  t = wrong_type(CB_NAMES, 'hash')
  if t then
    return { 'damaged', CB_NAMES .. ' holds a ' .. t .. ', not a hash. Repair: delete that '
      .. 'key; the breaker-events leader\'s sweep binds the job names again (or '
      .. 'create_breaker(..., replace=True) each breaker that has a job_name)' }
  end
  local key = CB .. 'b:' .. b
  local kt = wrong_type(key, 'hash')
  if kt and not replace then
    return { 'damaged', 'its record ' .. key .. ' holds a ' .. kt .. ', not a hash. '
      .. 'Repair: create_breaker(..., replace=True) defines it again (closed)' }
  end
  local exists = not kt and redis.call('EXISTS', key) == 1
  if exists and not replace then return { 'exists' } end
  if jn ~= '' then
    local owner = redis.call('HGET', CB_NAMES, jn)
    if owner and owner ~= b then return { 'name-taken', owner } end
  end
  local old = exists and redis.call('HGET', key, 'jn') or ''
  local ca = exists and arg_int(redis.call('HGET', key, 'ca'), NOW, 0, MAX_MS) or NOW
  -- Writes.
  if kt then
    redis.call('DEL', key, CB .. 'w:' .. b, CB .. 'p:' .. b)
    cb_let_go('cb:' .. b)  -- defined again closed: what it held runs
  end
  if old and old ~= '' and old ~= jn then redis.call('HDEL', CB_NAMES, old) end
  redis.call('HSET', key, 'jn', jn, 'pct', tostring(pct),
    'min', int(arg_int(ARGV[8], 10, 1, 1000000000)),
    'to', int(arg_int(ARGV[9], 60000, 1, MAX_DELAY_MS)),
    'win', int(arg_int(ARGV[10], 60000, 1000, MAX_DELAY_MS)),
    'pr', int(arg_int(ARGV[11], 1, 1, 1000)),
    'pto', int(arg_int(ARGV[12], 60000, 1, MAX_DELAY_MS)))
  if not exists then
    redis.call('HSET', key, 'st', 'closed', 'since', NOW_S, 'ca', NOW_S, 'n', 0)
  end
  -- Also lists again a breaker whose entry was lost (cb:ids deleted to repair it).
  redis.call('ZADD', CB_IDS, 'NX', int(ca), b)
  if jn ~= '' then redis.call('HSET', CB_NAMES, jn, b) end
  return { exists and 'replaced' or 'created' }
end

if op == 'sweep' then
  -- The breaker-events leader's safety net, every few seconds (events.py): for each
  -- listed breaker of this page of cb:ids that holds jobs, one that acts closed (gone,
  -- record of another type, state closed or no state) lets them go, and one open or
  -- half-open has its park timer armed again (it lives in the shared park keys, where
  -- a hand could delete it; an earlier one is kept).
  -- A page is at most SWEEP_PAGE breakers, so no call holds Redis for long; the leader
  -- walks cb:ids page by page across rounds. ARGV[6], ARGV[7]: the last breaker of the
  -- previous page and its score ('' = start from the first). Returns { breakers that
  -- let jobs go, last breaker of this page, its score } ('', '' when the walk is over:
  -- the next starts again from the first).
  -- It also binds again the job name of each breaker of the page that cb:names (a
  -- hash, or none) lacks: an index rebuilt by a claim from the first page only, or
  -- deleted by hand, is whole once a walk is over. A name bound to another breaker is
  -- left as it is (create_breaker refuses a taken name, so none should be).
  local SWEEP_PAGE = 1000
  local after, after_score = ARGV[6] or '', tonumber(ARGV[7] or '')
  local total = redis.pcall('ZCARD', CB_IDS)
  if type(total) ~= 'number' then return { 0, '', '' } end  -- list_breakers reports it
  local start = 0
  if after ~= '' then
    local r = redis.call('ZRANK', CB_IDS, after)
    if type(r) == 'number' then
      start = r + 1
    elseif after_score and after_score == after_score then
      -- Removed since: go on from the breakers listed after its score (those of the
      -- same score are seen again, which does no harm).
      start = redis.call('ZCOUNT', CB_IDS, '-inf', string.format('(%.17g', after_score))
    end
    if start >= total then start = 0 end
  end
  local page = redis.call('ZRANGE', CB_IDS, start, start + SWEEP_PAGE - 1, 'WITHSCORES')
  local ids, last, last_score = {}, '', ''
  for i = 1, #page, 2 do ids[#ids + 1] = page[i] end
  if #ids > 0 and start + #ids < total then last, last_score = page[#page - 1], page[#page] end
  local freed, named = 0, 0
  local names_ok = not wrong_type(CB_NAMES, 'hash')
  for _, id in ipairs(ids) do
    if names_ok then
      local jn = redis.pcall('HGET', CB .. 'b:' .. id, 'jn')
      if type(jn) == 'string' and jn ~= '' and redis.call('HSETNX', CB_NAMES, jn, id) == 1 then
        named = named + 1
      end
    end
    if redis.call('EXISTS', PREFIX .. 'parked:cb:' .. id) == 1 then
      local s = cb_load(id)
      if s and not s.bad then cb_tick(s) end
      if not s or s.bad or s.st == 'closed' then
        if cb_let_go('cb:' .. id) then freed = freed + 1 end
        if s and s.bad then cb_report(s.bad) end
        if not s then
          cb_report('circuit breaker ' .. id .. ' is listed in ' .. CB_IDS .. ' but its '
            .. 'record ' .. CB .. 'b:' .. id .. ' is gone (deleted by hand?): its jobs run '
            .. 'unguarded and those it held were let go. Repair: create_breaker(..., '
            .. 'replace=True) or remove_breaker()')
        end
      else
        local due = NOW + s.step
        if s.st == 'open' then due = s.untl end
        park_timer('cb:' .. id, due, s.pr, s.step)
      end
    end
  end
  if named > 0 then
    cb_report(named .. ' job name(s) of breakers listed in ' .. CB_IDS .. ' were missing '
      .. 'from ' .. CB_NAMES .. ' (rebuilt from part of the list, or deleted by hand): '
      .. 'bound to their breakers again by the sweep')
  end
  return { freed, last, last_score }
end

local s = cb_load(b)
if not s then
  -- Gone (deleted by hand): what it held runs, as its other jobs do.
  cb_let_go('cb:' .. b)
  if op == 'delete' and not wrong_type(CB_IDS, 'zset') then
    redis.call('ZREM', CB_IDS, b)  -- an entry left without its breaker
  end
  return { 'missing' }
end

if op == 'get' then
  if not s.bad then cb_tick(s) end
  return view(s)
elseif op == 'acquire' then
  -- ARGV[6]: token of this call. Returns { 'ok', 'closed' | 'probe' | 'damaged' } or
  -- { 'open', state, retry at (ms) }.
  if s.bad then return { 'ok', 'damaged', s.bad } end
  cb_tick(s)
  if s.st == 'closed' then return { 'ok', 'closed' } end
  if s.st == 'half-open' and s.po < s.pr then
    cb_take_probe(s, 'call:' .. ARGV[6])
    return { 'ok', 'probe' }
  end
  local at = s.untl
  if s.st == 'half-open' then at = s.pdl end
  return { 'open', s.st, int(at) }
elseif op == 'record' then
  -- ARGV[6]: token, ARGV[7]: success | failure | neutral.
  local kind = ARGV[7]
  if kind ~= 'success' and kind ~= 'failure' and kind ~= 'neutral' then
    return bad_arg('breaker', 'outcome must be success, failure or neutral')
  end
  if s.bad then return { 'ok', 'damaged' } end
  cb_outcome(s, 'call:' .. ARGV[6], kind)
  return { 'ok', s.st }
elseif op == 'reset' then
  if s.bad then return { 'damaged', s.bad } end
  cb_log_ok()
  -- Rewrites every state field (a damaged one too) with what was read.
  redis.call('HSET', s.key, 'until', int(s.untl), 'ca', int(s.ca))
  cb_set(s, 'closed', ARGV[6] ~= '' and ARGV[6] or 'reset by an operator')
  return view(s)
elseif op == 'open' then
  -- ARGV[6]: ms to stay open (0: the breaker's timeout); ARGV[7]: reason.
  if s.bad then return { 'damaged', s.bad } end
  local ms = arg_int(ARGV[6], 0, 0, MAX_DELAY_MS)
  local to = s.to
  if ms > 0 then s.to = ms end
  cb_set(s, 'open', ARGV[7] ~= '' and ARGV[7] or 'opened by an operator')
  s.to = to
  return view(s)
elseif op == 'delete' then
  -- Reads first: the keys it writes besides the breaker's own may be damaged.
  local ids_ok = not wrong_type(CB_IDS, 'zset')
  local owner = s.jn ~= '' and redis.pcall('HGET', CB_NAMES, s.jn)
  local from = s.bad and 'damaged' or s.st
  cb_log_ok()
  cb_let_go(s.blocker)
  if owner == b then redis.call('HDEL', CB_NAMES, s.jn) end
  redis.call('DEL', s.key, CB .. 'w:' .. b, CB .. 'p:' .. b)
  if ids_ok then redis.call('ZREM', CB_IDS, b) end
  feature_event('breaker-state', b, 'from', from, 'to', 'removed', 'why',
    'removed by an operator')
  if cb_log_ok() then
    redis.call('XADD', CB_LOG, 'MAXLEN', '~', CB_LOG_MAX, '*', 'b', b, 'from', from,
      'to', 'removed', 'why', 'removed by an operator', 'at', NOW_S)
  end
  return { 'ok' }
end
return bad_arg('breaker', 'unknown operation')
"""
)
