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
``cb:log``     STREAM state changes: ``b from to why at`` (about ``LOG_MAXLEN`` kept)

A bound run carries its breaker's id on itself: job-hash field ``cb``, written when
admission lets it run and read (and deleted) by the release slot when it ends, so its
outcome is counted whatever happens to another key (admission drops one found on a
waiting job: no admitted run left it). Earlier versions kept the same in a hash
``cb:of``, which is no longer read or written. ``cb:names`` of another type is rebuilt
from the first 1000 breakers listed in ``cb:ids`` by the first claim that needs it; the
``breaker-events`` leader's sweep binds again any job name the index lacks, page by page.

Jobs held by an open breaker are parked behind the blocker ``cb:<id>``. A breaker
acting closed (its record damaged, or gone) holds none: what it held is let go
(``cb_let_go``) by the first claim of one of its jobs, by a read of it, and by the
``breaker-events`` leader's sweep (``script.py``).
"""

from __future__ import annotations

from typing import Final

__all__ = ["ADMISSION", "LIB", "LOG_MAXLEN", "RELEASE", "STEP_MS"]

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
  local CB_NAMES, CB_LOG = CB .. 'names', CB .. 'log'
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
          .. 'there, uncounted, and those it held are let go. Repair: '
          .. 'create_breaker(..., replace=True) or remove_breaker()' }
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
    -- Times no change of state writes (by hand): a state entered over a day ahead of
    -- the clock is read as entered now, and an open state that would outlast any
    -- timeout or force_open duration as open for the breaker's timeout (the view
    -- names them; the next change of state rewrites them).
    if s.since > NOW + 86400000 then s.since, s.odd = NOW, { 'since' } end
    if s.untl > s.since + MAX_DELAY_MS then
      s.untl = s.since + s.to
      s.odd = s.odd or {}
      s.odd[#s.odd + 1] = 'until'
    end
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

  -- The jobs held behind `blocker` go back to wait (a bounded number now, the rest from
  -- a timer due now, 1,000 per claim, in their order); true when there were any. unpark
  -- wakes idle workers in this same call, so closing and every repair (a read, the
  -- leader's sweep, replace) start them at once. In claim, only from admit_after (claim
  -- scans wait meanwhile).
  local function cb_let_go(blocker)
    if redis.call('EXISTS', PREFIX .. 'parked:' .. blocker) == 0 then return false end
    unpark(blocker, 100)
    if redis.call('EXISTS', PREFIX .. 'parked:' .. blocker) == 1 then
      park_timer(blocker, NOW, 0, 0)
    end
    return true
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
      redis.call('HSET', s.key, 'st', st, 'since', NOW_S, 'until', int(s.untl), 'po', 0,
        'pok', 0, 'pdl', 0)
    end
    if st ~= 'half-open' then
      redis.call('DEL', CB .. 'w:' .. s.id)
      s.w = nil
    end
    if st == 'closed' and held then cb_let_go(s.blocker) end
    cb_note(s, from, why)
  end

  -- cb:names (of another type: written by hand) made again from the job names of the
  -- breakers listed in cb:ids (the first 1000, oldest first, so that a claim stays
  -- bounded; the leader's sweep binds the others' names as its walk reaches them): an
  -- index of what their hashes say. False, writing nothing, when cb:ids is unreadable.
  local function cb_rebuild_names()
    local ids = redis.pcall('ZRANGE', CB .. 'ids', 0, 999)
    if ids.err then return false end
    local found, seen = {}, {}
    for _, id in ipairs(ids) do
      local jn = redis.pcall('HGET', CB .. 'b:' .. id, 'jn')
      if type(jn) == 'string' and jn ~= '' and not seen[jn] then
        seen[jn] = true
        found[#found + 1] = { jn, id }
      end
    end
    redis.call('DEL', CB_NAMES)
    for _, f in ipairs(found) do redis.call('HSET', CB_NAMES, f[1], f[2]) end
    return true
  end

  -- Whether probes of half-open breaker s are out (a probe set of another type counts
  -- as out: the deadline then opens the breaker again, which deletes it).
  local function cb_probes_out(s)
    local n = redis.pcall('SCARD', CB .. 'p:' .. s.id)
    return type(n) ~= 'number' or n > 0
  end

  -- Whether the probes of half-open breaker s are overdue: its probe deadline passed
  -- with probes out, or with every probe place taken (a probe that left the probe set
  -- by hand would otherwise hold the breaker half-open for good). Probes admitted with
  -- no deadline (lost: damaged) are due probe_timeout after the half-open start.
  local function cb_overdue(s)
    local dl = s.pdl
    if dl == 0 then
      if s.po == 0 then return false end
      dl = s.since + s.pto
    end
    return NOW >= dl and (s.po >= s.pr or cb_probes_out(s))
  end

  -- Time-driven changes: open -> half-open when the timeout is over; half-open -> open
  -- when a probe has not reported by its deadline.
  local function cb_tick(s)
    if s.st == 'open' and NOW >= s.untl then
      cb_set(s, 'half-open', 'open timeout elapsed')
    elseif s.st == 'half-open' and cb_overdue(s) then
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
  local names, armed, freed = {}, {}, {}
  local cur_s, cur_probe = nil, false

  -- A breaker acting closed (record damaged or gone, or a state that is no state)
  -- holds nothing: what it held goes back to wait once this call's jobs are handed out.
  local function let_go(b)
    if freed[b] then return end
    freed[b] = true
    admit_after('cb-let-go:' .. b, function() cb_let_go('cb:' .. b) end)
  end

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
      -- cb:names of another type (written by hand) is rebuilt from the breakers; when
      -- it cannot be, it binds no job by its name: never a reason to stop every job.
      local len = redis.pcall('HLEN', CB_NAMES)
      if type(len) ~= 'number' then
        if cb_rebuild_names() then
          len = redis.call('HLEN', CB_NAMES)
          cb_report(CB_NAMES .. ' held another Redis type, not a hash: rebuilt from the '
            .. 'job names of the first 1000 breakers listed in ' .. CB .. 'ids (the '
            .. 'breaker-events leader\'s sweep binds the others\' names as its walk reaches '
            .. 'them; one missing from that list binds no job by its name until '
            .. 'create_breaker(..., replace=True))')
        else
          cb_report(CB_NAMES .. ' holds another Redis type, not a hash, and ' .. CB
            .. 'ids cannot be read to rebuild it: no job is bound to a breaker by its '
            .. 'name. Repair: delete both keys, then create_breaker(..., replace=True) '
            .. 'each breaker')
        end
      end
      any_names = type(len) == 'number' and len > 0
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

  -- The run carries its breaker (job-hash field cb; claim read the hash, so it is one):
  -- the release slot counts its outcome from there.
  local function commit(id, jk)
    redis.call('HSET', jk, 'cb', cur_s.id)
    if cur_probe then cb_take_probe(cur_s, id) end
  end

  -- `cb`: the job-hash field claim read for this check (declared with the slot). A
  -- waiting job runs nothing, so one there was left by a run its breaker never saw end
  -- (a worker without the manager) or written by hand: dropped, lest it count.
  return function(id, jk, opts, n, cb)
    if cb then redis.call('HDEL', jk, 'cb') end
    local b = bound(opts, n)
    if not b then return true end
    local s = cb_load(b)
    if not s then let_go(b); return true end
    if s.bad then cb_report(s.bad); let_go(b); return true end
    if s.raw.st ~= s.st then let_go(b) end  -- a state that is no state: read as closed
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
  return function(id, jk, outcome, payload, context, b)
    -- Only runs this feature admitted count: they carry their breaker (field cb, from
    -- admission's commit); a job removed while waiting or parked, or bound to no
    -- breaker, has none. `b`: that field as finish read it (false: none, nothing to
    -- do, no command); nil from the other ways out of active, which read it here.
    -- pcall: a job key of another type has none either.
    if b == false then return end
    if b == nil then b = redis.pcall('HGET', jk, 'cb') end
    if type(b) ~= 'string' then return end
    local s = cb_load(b)
    redis.call('HDEL', jk, 'cb')
    if not s or s.bad then return end
    cb_outcome(s, id, KIND[outcome] or 'neutral')
  end
end)()"""
)
