"""The Lua of circuit breakers: one library shared by the slot fragments and the
breaker script, so a state change means the same thing wherever it happens.

Keys (every one under the queue's hash tag, built from ``PREFIX``; ``keys.py`` names in
``features/breakers/store.py``):

``cb:b:<id>``  HASH  definition (``jn pct min to win pr pto``) and state: ``st``
                     (closed | open | half-open), ``since`` (ms), ``until`` (open until,
                     ms), ``po`` probes admitted in this half-open period, ``pok`` probes
                     that succeeded, ``pdl`` probe deadline (ms), ``n`` state changes,
                     ``why`` the reason of the last one, ``ca`` created at (ms)
``cb:w:<id>``  HASH  rolling window: ``lo`` oldest live bucket, ``R``/``F`` requests and
                     failures in the window, ``r<k>``/``f<k>`` per bucket ``k``
``cb:p:<id>``  SET   members admitted as probes in this half-open period (job ids,
                     ``call:<token>`` for inline calls)
``cb:names``   HASH  job name -> breaker id (jobs of that name are bound to it)
``cb:ids``     ZSET  breaker id -> created at (ms)
``cb:of``      HASH  job id -> breaker id, for each bound run admitted and not yet ended
``cb:log``     STREAM state changes: ``b from to why at`` (about ``LOG_MAXLEN`` kept)

Jobs held by an open breaker are parked behind the blocker ``cb:<id>``.
"""

from __future__ import annotations

from typing import Final

__all__ = ["ADMISSION", "LIB", "LOG_MAXLEN", "RELEASE", "SCRIPT", "STEP_MS"]

#: Entries kept (about) in the ``cb:log`` stream of state changes.
LOG_MAXLEN: Final = 1000
#: While a breaker is open (or half-open with every probe out), its park timer brings
#: ``probes`` held jobs back this often, at most (ms): admission sees them and either
#: admits them as probes or parks them again. It bounds how late probes start after
#: the open timeout, and how late a stuck probe is noticed after its deadline.
STEP_MS: Final = 1000

# The library: local functions over the keys above. Inside a fragment it is evaluated
# once per script call; `loaded` caches each breaker read in this call, and every write
# updates the cached table too. Reads come first and writes last in every function
# (a fragment must never fail after a write).
_LIB = r"""
  local CB = PREFIX .. 'cb:'
  local CB_NAMES, CB_OF, CB_LOG = CB .. 'names', CB .. 'of', CB .. 'log'
  local CB_LOG_MAX = '@LOG_MAX@'
  local CB_STEP = @STEP@
  local STATES = { closed = true, open = true, ['half-open'] = true }
  local loaded = {}
  local cb_reported, cb_log_state = {}, nil

  -- A breaker key or index written by hand (another Redis type): recorded once per
  -- script call for operators in slot-errors ('circuit-breakers:damaged'); the
  -- breaker acts as if it were not there (its jobs run) until it is repaired.
  local function cb_report(what)
    if cb_reported[what] then return end
    cb_reported[what] = true
    slot_failed('circuit-breakers', 'damaged', what)
  end

  -- Whether state changes can be logged (cb:log is a stream or absent); read once
  -- per call, before the first write of a state change.
  local function cb_log_ok()
    if cb_log_state == nil then
      local t = redis.call('TYPE', CB_LOG)
      t = type(t) == 'table' and t.ok or t
      cb_log_state = t == 'stream' or t == 'none'
    end
    return cb_log_state
  end

  -- A counter read from Redis: a whole number from 0 to 1e15, else nil (damaged).
  local function cb_count(x)
    x = tonumber(x)
    if x == nil or x ~= x or x < 0 or x >= 1e15 then return nil end
    return math.floor(x)
  end

  local function cb_load(b)
    local s = loaded[b]
    if s ~= nil then return s end
    local key = CB .. 'b:' .. b
    local raw = redis.pcall('HGETALL', key)
    if raw.err then
      s = { id = b, key = key, blocker = 'cb:' .. b, jn = '', st = 'closed',
        bad = 'circuit breaker ' .. b .. ': its record ' .. key .. ' holds another '
          .. 'Redis type, not a hash (written by hand?); its jobs run as if it were not '
          .. 'there. Repair: create_breaker(..., replace=True) or remove_breaker()' }
      loaded[b] = s
      return s
    end
    if #raw == 0 then loaded[b] = false; return false end
    local h = {}
    for i = 1, #raw, 2 do h[raw[i]] = raw[i + 1] end
    local pct = tonumber(h.pct)
    if pct == nil or pct ~= pct or pct <= 0 or pct > 100 then pct = 50 end
    s = { id = b, key = key, blocker = 'cb:' .. b, jn = h.jn or '',
      st = STATES[h.st] and h.st or 'closed',
      since = arg_int(h.since, 0, 0, MAX_MS), untl = arg_int(h['until'], 0, 0, MAX_MS),
      pct = pct, min = arg_int(h.min, 10, 1, 1000000000),
      to = arg_int(h.to, 60000, 1, MAX_DELAY_MS), win = arg_int(h.win, 60000, 1000, MAX_DELAY_MS),
      pr = arg_int(h.pr, 1, 1, 1000), pto = arg_int(h.pto, 60000, 1, MAX_DELAY_MS),
      po = arg_int(h.po, 0, 0, 1000), pok = arg_int(h.pok, 0, 0, 1000),
      pdl = arg_int(h.pdl, 0, 0, MAX_MS), n = arg_int(h.n, 0, 0, MAX_MS), why = h.why or '',
      ca = arg_int(h.ca, 0, 0, MAX_MS), raw = h }
    s.step = math.min(CB_STEP, s.to)
    loaded[b] = s
    return s
  end

  -- Requests and failures in the rolling window, after adding dr / df. The window is
  -- cut into buckets of `bw` ms (at most about 60 per window); buckets that left it are
  -- subtracted and dropped, at most one window's worth per call. What was read is kept
  -- in s.w for the rest of the script call, so each further outcome costs one HSET.
  local function cb_window(s, dr, df)
    local bw = math.max(100, math.ceil(s.win / 60))
    local k = math.floor(NOW / bw)
    local w = s.w
    if w == nil or w.k ~= k then
      local wk = CB .. 'w:' .. s.id
      local nb = math.ceil(s.win / bw)
      local first = k - nb + 1
      -- The window is derived data: one of another type, or with counts that are no
      -- counts (written by hand), starts again empty.
      local h = redis.pcall('HMGET', wk, 'lo', 'R', 'F', 'r' .. int(k), 'f' .. int(k))
      local damaged = h.err ~= nil
      if damaged then h = {} end
      local lo, R, F = tonumber(h[1]), cb_count(h[2] or 0), cb_count(h[3] or 0)
      local r, f = cb_count(h[4]) or 0, cb_count(h[5]) or 0
      local drop, reset = {}, false
      if damaged or lo == nil or lo ~= lo or lo > k or first - lo > nb or not R or not F then
        reset = damaged or h[1] or h[2] or h[3]
        lo, R, F, r, f = first, 0, 0, 0, 0
      end
      while lo < first do
        local c = redis.call('HMGET', wk, 'r' .. int(lo), 'f' .. int(lo))
        R, F = R - (cb_count(c[1]) or 0), F - (cb_count(c[2]) or 0)
        drop[#drop + 1] = 'r' .. int(lo)
        drop[#drop + 1] = 'f' .. int(lo)
        lo = lo + 1
      end
      R, F = math.max(R, 0), math.max(F, 0)
      if F > R then F = R end
      -- Writes.
      if reset then redis.call('DEL', wk) end
      if #drop > 0 then
        redis.call('HDEL', wk, unpack(drop))
        redis.call('HSET', wk, 'lo', int(lo), 'R', int(R), 'F', int(F))
      end
      w = { wk = wk, k = k, lo = lo, R = R, F = F, r = r, f = f, ttl = s.win + bw }
      s.w = w
    end
    if dr > 0 or df > 0 then
      w.R, w.F, w.r, w.f = w.R + dr, w.F + df, w.r + dr, w.f + df
      redis.call('HSET', w.wk, 'r' .. int(k), int(w.r), 'f' .. int(k), int(w.f),
        'lo', int(w.lo), 'R', int(w.R), 'F', int(w.F))
      if w.ttl then
        redis.call('PEXPIRE', w.wk, w.ttl)
        w.ttl = nil
      end
    end
    return w.R, w.F
  end

  local function cb_note(s, from, why)
    s.n, s.why = s.n + 1, why
    redis.call('HSET', s.key, 'n', int(s.n), 'why', why)
    feature_event('breaker-state', s.id, 'from', from, 'to', s.st, 'why', why)
    if cb_log_ok() then
      redis.call('XADD', CB_LOG, 'MAXLEN', '~', CB_LOG_MAX, '*', 'b', s.id, 'from', from,
        'to', s.st, 'why', why, 'at', NOW_S)
    else
      cb_report(CB_LOG .. ' holds another Redis type, not a stream: breaker state changes '
        .. 'are not logged. Repair: delete that key (DEL)')
    end
  end

  -- Move breaker s to state st. Opening arms the park timer of its held jobs (the
  -- first `pr` come back when the timeout ends); closing sends them all back to wait,
  -- a bounded number now and the rest from the timer, as claims serve it.
  local function cb_set(s, st, why)
    local from = s.st
    cb_log_ok()  -- read before the first write
    local held = redis.call('EXISTS', PREFIX .. 'parked:' .. s.blocker) == 1
    s.st, s.since, s.po, s.pok, s.pdl = st, NOW, 0, 0, 0
    redis.call('DEL', CB .. 'p:' .. s.id)
    if st == 'open' then
      s.untl = NOW + s.to
      redis.call('HSET', s.key, 'st', st, 'since', NOW_S, 'until', int(s.untl), 'po', 0,
        'pok', 0, 'pdl', 0)
      if held then park_timer(s.blocker, s.untl, s.pr, s.step) end
    else
      redis.call('HSET', s.key, 'st', st, 'since', NOW_S, 'po', 0, 'pok', 0, 'pdl', 0)
    end
    if st ~= 'half-open' then
      redis.call('DEL', CB .. 'w:' .. s.id)
      s.w = nil
    end
    if st == 'closed' and held then
      unpark(s.blocker, 100)
      if redis.call('EXISTS', PREFIX .. 'parked:' .. s.blocker) == 1 then
        park_timer(s.blocker, NOW, 0, 0)
      end
    end
    cb_note(s, from, why)
  end

  -- Whether probes of half-open breaker s are out (a probe set of another type counts
  -- as out: the deadline then opens the breaker again, which deletes it).
  local function cb_probes_out(s)
    local n = redis.pcall('SCARD', CB .. 'p:' .. s.id)
    return type(n) ~= 'number' or n > 0
  end

  -- Time-driven changes: open -> half-open when the timeout is over; half-open -> open
  -- when a probe has not reported by its deadline.
  local function cb_tick(s)
    if s.st == 'open' and NOW >= s.untl then
      cb_set(s, 'half-open', 'open timeout elapsed')
    elseif s.st == 'half-open' and s.pdl > 0 and NOW >= s.pdl
        and cb_probes_out(s) then
      cb_set(s, 'open', 'a probe did not report within probe_timeout')
    end
  end

  -- Admit `member` (a job id or 'call:<token>') as a probe of half-open breaker s. A
  -- probe set of another type (written by hand) is replaced: it only holds this
  -- half-open period's probes.
  local function cb_take_probe(s, member)
    local pk = CB .. 'p:' .. s.id
    if type(redis.pcall('SADD', pk, member)) == 'table' then
      redis.call('DEL', pk)
      redis.call('SADD', pk, member)
    end
    s.po = s.po + 1
    s.pdl = NOW + s.pto
    redis.call('HSET', s.key, 'po', int(s.po), 'pdl', int(s.pdl))
  end

  -- The outcome of a run or call that breaker s admitted: 'success', 'failure' or
  -- 'neutral' (counts nowhere; a probe's place is given back).
  local function cb_outcome(s, member, kind)
    local probe = s.st ~= 'closed'
      and redis.pcall('SISMEMBER', CB .. 'p:' .. s.id, member) == 1
    cb_tick(s)
    if probe and s.st == 'half-open' then
      redis.call('SREM', CB .. 'p:' .. s.id, member)
      if kind == 'failure' then
        cb_set(s, 'open', 'a half-open probe failed')
      elseif kind == 'success' then
        s.pok = s.pok + 1
        if s.pok >= s.pr then
          cb_set(s, 'closed', s.pr .. ' half-open probe(s) succeeded')
        else
          redis.call('HSET', s.key, 'pok', int(s.pok))
        end
      else
        s.po = math.max(s.po - 1, 0)
        redis.call('HSET', s.key, 'po', int(s.po))
        unpark(s.blocker, 1)
      end
    elseif s.st == 'closed' and kind ~= 'neutral' then
      local R, F = cb_window(s, 1, kind == 'failure' and 1 or 0)
      if R >= s.min and F * 100 >= s.pct * R then
        cb_set(s, 'open', F .. ' of ' .. R .. ' requests failed in the window')
      end
    end
  end
"""

LIB: Final = _LIB.replace("@LOG_MAX@", str(LOG_MAXLEN)).replace("@STEP@", str(STEP_MS))

# Fragments (kitium_queue.slots): Lua expressions evaluating to the slot's function.
ADMISSION: Final = (
    "(function()\n"
    + LIB
    + r"""
  local any_names = nil
  local names, armed = {}, {}
  local cur_s, cur_probe = nil, false

  -- The breaker a job is bound to: its circuit_breaker_id option, else its name's.
  local function bound(opts, n)
    if opts and opts ~= '' and string.find(opts, '"circuit_breaker_id"', 1, true) then
      local ok, o = pcall(cjson.decode, opts)
      if ok and type(o) == 'table' then
        local b = o['circuit_breaker_id']
        if type(b) == 'string' and b ~= '' then return b end
      end
    end
    if not n then return nil end
    if any_names == nil then
      -- cb:names of another type (written by hand) binds no job by its name: never a
      -- reason to stop every job of the queue.
      local len = redis.pcall('HLEN', CB_NAMES)
      any_names = type(len) == 'number' and len > 0
      if type(len) ~= 'number' then
        cb_report(CB_NAMES .. ' holds another Redis type, not a hash: no job is bound '
          .. 'to a breaker by its name. Repair: delete that key, then '
          .. 'create_breaker(..., replace=True) each breaker that has a job_name')
      end
    end
    if not any_names then return nil end
    local b = names[n]
    if b == nil then
      b = redis.call('HGET', CB_NAMES, n) or false
      names[n] = b
    end
    return b or nil
  end

  local function hold(s, due)
    if not armed[s.id] then
      park_timer(s.blocker, due, s.pr, s.step)
      armed[s.id] = true
    end
    admit_park(s.blocker)
    return false
  end

  -- cb:of first: of another type, nothing is written (the job runs uncounted).
  local function commit(id, jk)
    if type(redis.pcall('HSET', CB_OF, id, cur_s.id)) == 'table' then
      cb_report(CB_OF .. ' holds another Redis type, not a hash: the outcomes of bound '
        .. 'jobs are not counted. Repair: delete that key')
      return
    end
    if cur_probe then cb_take_probe(cur_s, id) end
  end

  return function(id, jk, opts, n)
    local b = bound(opts, n)
    if not b then return true end
    local s = cb_load(b)
    if not s then return true end
    if s.bad then cb_report(s.bad); return true end
    cb_tick(s)
    cur_s, cur_probe = s, false
    if s.st == 'closed' then return true, commit end
    if s.st == 'open' then return hold(s, s.untl) end
    if s.po < s.pr then
      cur_probe = true
      return true, commit
    end
    return hold(s, NOW + s.step)
  end
end)()"""
)

RELEASE: Final = (
    "(function()\n"
    + LIB
    + r"""
  local KIND = { completed = 'success', retrying = 'failure', failed = 'failure' }
  return function(id, jk, outcome)
    -- Only runs this feature admitted count (a job removed while waiting or parked,
    -- or bound to no breaker, has no entry).
    local b = redis.pcall('HGET', CB_OF, id)
    if type(b) ~= 'string' then return end  -- none, or cb:of damaged (admission said so)
    local s = cb_load(b)
    redis.call('HDEL', CB_OF, id)
    if not s or s.bad then return end
    cb_outcome(s, id, KIND[outcome] or 'neutral')
  end
end)()"""
)

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

-- The jobs held behind a blocker go back to wait (a bounded number now, the rest from
-- the timer).
local function release_held(blocker)
  if redis.call('EXISTS', PREFIX .. 'parked:' .. blocker) == 1 then
    unpark(blocker, 100)
    if redis.call('EXISTS', PREFIX .. 'parked:' .. blocker) == 1 then
      park_timer(blocker, NOW, 0, 0)
    end
  end
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
  if #bad == 0 then return '' end
  return 'field(s) ' .. table.concat(bad, ', ') .. ' of ' .. s.key .. ' hold no valid '
    .. 'value (each read as its default). Repair: reset() rewrites the state, '
    .. 'create_breaker(..., replace=True) the definition'
end

local function view(s)
  if s.bad then return { 'damaged', s.bad } end
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
      .. 'key, then create_breaker(..., replace=True) each breaker that has a job_name' }
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
    release_held('cb:' .. b)  -- defined again closed: what it held runs
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

local s = cb_load(b)
if not s then
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
  release_held(s.blocker)
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
