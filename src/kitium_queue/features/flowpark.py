"""Flow control: rate-limited jobs past a bound are parked, out of claim's scan.

A worker's claim examines at most ``max(1000, concurrency * 4)`` candidates of ``wait``
per call. A job over its ``rate_limit_key``'s rate (or held by ``RateLimited``) stays
in ``wait`` by default, so a key's backlog at the front of ``wait`` could fill that
scan: the jobs of every other key behind it (and jobs with no key, due delayed jobs and
retries put back behind it) did not start until the backlog fell below the scan's
size.

So one claim leaves at most ``HELD_MAX`` held-back candidates in ``wait``, of all keys
together, and parks every further one behind its key's timer (blocker ``'rl:<key>'``,
status ``pending``), as ``queue.flow.park_rate_limited_jobs()`` parks them all. Claim
examines candidates in order, so a key's jobs left in ``wait`` are its first ones; once
one of a key's jobs is parked in a call, every later one of the key in that call is
parked too. The parked ones come back behind them, in their order, ``max`` per window
from the window's end (all of them at the end of a hold with no limit), and claim
judges each one again. The scan keeps ``scan - HELD_MAX`` places (500 at least) for
other jobs. A claim that finds no more held-back jobs than that parks none: nothing
changes for keys within their rate, or with a short backlog.

Parked jobs follow the key's current declaration (``behind_parked``): a job of the key
that may start while older ones of it are parked (the limit removed or raised since)
waits, and their timer is due at once by the current rule; their timer is armed again
when its rule is not the current one, or is gone.

One bound for all keys: a bound per key would not keep many keys' backlogs out of the
scan, and a tenant's holders held back by one key (up to 500 in ``wait``: tenancy's
``MAX_PLACES``, half the scan as well) stay where tenancy put them.
"""

from __future__ import annotations

__all__ = ["HELD_MAX", "hold_back_lua"]

#: Held-back candidates (over their key's rate, or held) that one claim leaves in
#: ``wait``, of all rate-limit keys together: half the smallest scan (1000).
HELD_MAX = 500

# Runs inside flow control's admission fragment, after its prelude (PARK_RATE,
# rate_blocker) and within claim (admit_retry, admit_park: admission.lua). Its count
# lives for one script call, like the prelude's caches.
_LUA = """-- Candidate `id` held back by rate-limit key rk (its window full, or a hold) until
  -- `due`: left in wait while this call left fewer than HELD_MAX there, else (and always
  -- with PARK_RATE) parked behind the key's timer until then (flowpark.py).
  local HELD_MAX, held, parked_id = @HELD_MAX@, 0, nil
  -- Once the candidates are out of wait: a job parked by this call (the last one asked
  -- for, out of wait: its blocker's set took it) wakes a worker, whose claim scans on
  -- past them, to the jobs behind.
  local function parked_woke()
    if not redis.call('ZSCORE', K_WAIT, parked_id) then wake() end
  end
  local function hold_back(id, rk, due, lim)
    admit_retry(due)
    if held < HELD_MAX and not PARK_RATE then
      held = held + 1
    else
      admit_park(rate_blocker(rk, due, lim))
      parked_id = id
      admit_after('flow-control:parked', parked_woke)
    end
  end
  -- Candidate `id` of rate-limit key rk, which may start now (no hold, room in its
  -- window, or no limit any more). Its key's parked jobs (blocker 'rl:<key>') wait for
  -- a timer armed with the rule of their parking: a limit removed or changed since (or
  -- a hold's key deleted by hand) left them parked, coming back at the old pace (one an
  -- hour for a limit of one an hour), while later jobs of the key ran before them. So a
  -- candidate behind the first of them is held back and their timer is due now, by the
  -- current rule; a timer whose rule is not the current one (or none: the timers
  -- deleted by hand) is armed again now as well. True: the candidate waits.
  local rl_first, rl_ruled = {}, {}
  local function behind_parked(id, rk, lim)
    local blocker = 'rl:' .. rk
    local first = rl_first[rk]
    if first == nil then
      local r = park_call('zset', 'ZRANGE', PARKED_PREFIX .. blocker, 0, 0, 'WITHSCORES')
      first = (r and r[2] and tonumber(r[2])) or false
      rl_first[rk] = first
    end
    if not first then return false end
    local n, every = 0, 0
    if lim then n, every = arg_int(lim[1], 0, 0, UNPARK_MAX), arg_int(lim[2], 0, 0, MAX_MS) end
    local score = tonumber(redis.call('ZSCORE', K_WAIT, id))
    if score and score > first then
      park_timer(blocker, NOW, n, every)
      hold_back(id, rk, NOW, lim)
      return true
    end
    if rl_ruled[rk] then return false end
    rl_ruled[rk] = true
    -- Their timer's rule (none: the timers were deleted by hand) against the current one.
    local rule = park_call('rules', 'HGET', K_PARK_RULES, blocker)
    if not rule or not string.find(rule, '^' .. int(n) .. ' ' .. int(every) .. ' ') then
      park_timer(blocker, NOW, n, every)
    end
    return false
  end"""


def hold_back_lua() -> str:
    """The Lua of ``hold_back(id, rk, due, lim)`` and ``behind_parked(id, rk, lim)`` for
    flow control's admission fragment."""
    return _LUA.replace("@HELD_MAX@", str(HELD_MAX))
