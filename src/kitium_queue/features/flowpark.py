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

A key's parked jobs follow a change of its limit even when none of its jobs is left in
``wait`` to meet ``behind_parked``: ``follow_limits`` walks the parked rate-limit keys
(``FOLLOW_SCRIPT``, a page of the parked index per call) and arms again each timer whose
rule is not the current declaration's (or that is gone) for when the key may start next
by the current rule, when that is sooner (a limit raised or removed), and wakes the
workers; a timer due no later (a limit lowered) fires as armed, claim judging again each
job it brings back. It runs when a
rate limit is set or removed in a process whose queue is connected (and once more a
moment later: a worker's claim already sent carries the previous declarations), when a
worker starts (a process started with other declarations, as set by the advanced
config), and with the flow-control heal (``flowheal.py``, every 30 s in one process).
Nothing changes for a timer armed by the current declaration.

The two walks after a change also wake the idle workers whatever they find: a key's
held-back jobs left in ``wait`` (not parked) have no timer to arm, and idle workers
sleep until the key's window ends, at most their periodic re-check (5 s); woken, they
claim by the new limit at once. One wake-up per walk (a lowered limit's costs one claim
that finds nothing), nothing per job.

One bound for all keys: a bound per key would not keep many keys' backlogs out of the
scan, and a tenant's holders held back by one key (up to 500 in ``wait``: tenancy's
``MAX_PLACES``, half the scan as well) stay where tenancy put them.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ..leader import cancel_and_wait
from ..limits import get_logger, reply_text

if TYPE_CHECKING:
    from ..queue import JobQueue

__all__ = [
    "FOLLOW_SCRIPT",
    "HELD_MAX",
    "follow_limits",
    "follow_script",
    "follow_service",
    "follow_soon",
    "hold_back_lua",
]

log = get_logger(__name__)

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


#: The script's name in the queue's registry (compiled with the declarations).
FOLLOW_SCRIPT = "rl_follow"
#: Index entries scanned per script call (ZSCAN COUNT: each call is short).
PAGE = 100
#: Script calls per walk at most.
MAX_CALLS = 10_000
#: The second walk after a limit changed (``follow_soon``), in seconds.
FOLLOW_AGAIN_S = 1.0

_FOLLOW = """--[[
  rl_follow.lua: the timers of jobs parked behind rate-limit keys ('rl:<key>') armed
  again by the current declarations (kitium_queue.features.flowpark), one page of the
  parked index per call.

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]  ZSCAN cursor of the parked index ('0' = from the start)
  ARGV[5]  index entries scanned per call (COUNT), clamped to 1..1000
  ARGV[6]  '1': the limits were changed in this process; the walk's first call (cursor
           '0') wakes idle workers whatever it finds, for the held-back jobs left in
           wait that a raised or removed limit lets start (none of them is parked)
  Returns { next cursor ('0' = the walk is over), timers armed again }. A key whose
  timer's rule ("<n> <every> <due>") is the current declaration's is left as it is.
  Any other (its limit set, changed or removed since its jobs were parked; its timer
  deleted by hand) is armed by the current rule for when the key may start next (now,
  at the end of a hold, or at the end of a window that the current limit finds full)
  when that is sooner than its timer is due, or it has none; a timer due no later is
  left as armed (claim judges again every job it brings back). When any was armed,
  idle workers are woken. The marker, the one key written that is not a
  parking key, is checked first; parking keys and a key's window that hold another
  type are skipped (lib_parking.lua).
]]
--@include lib_base
--@include lib_jobs
--@include lib_events
--@include lib_parking
--@include lib_park_timers
@PRELUDE@

local cursor = ARGV[4] or '0'
if not string.match(cursor, '^%d+$') then return bad_arg('rl_follow', 'bad cursor') end
local page = arg_int(ARGV[5], 100, 1, 1000)
local bad = check_keys(9)
if bad then return bad end
if ARGV[6] == '1' and cursor == '0' then wake() end
if redis.call('TYPE', K_PARKED)['ok'] ~= 'zset' then return { '0', 0 } end
local got = redis.call('ZSCAN', K_PARKED, cursor, 'MATCH', 'rl:*', 'COUNT', page)
local armed = 0
for i = 1, #got[2], 2 do
  local blocker = got[2][i]
  local rk = string.sub(blocker, 4)
  local lim = ANY_RATE and lookup('r', RATE_EXACT, RATE_PREFIX, rk)
  local n, every = 0, 0
  if lim then n, every = arg_int(lim[1], 0, 0, UNPARK_MAX), arg_int(lim[2], 0, 0, MAX_MS) end
  local rule = park_call('rules', 'HGET', K_PARK_RULES, blocker)
  local timer = tonumber(park_call('timers', 'ZSCORE', K_PARK_TIMERS, blocker))
  local current = timer and rule and string.find(rule, '^' .. int(n) .. ' ' .. int(every) .. ' ')
  if not current and (park_call('zset', 'ZCARD', PARKED_PREFIX .. blocker) or 0) > 0 then
    local due, h = NOW, held_until(rk)
    if h > 0 then
      due = h
    elseif lim then
      local wt = redis.call('TYPE', PREFIX .. 'rl:' .. rk)['ok']
      if wt == 'hash' or wt == 'none' then
        local st = window(rk, lim)
        if st.used >= st.max and st.reset then due = st.reset end
      end
    end
    -- Only sooner: a timer due no later fires as armed, and claim judges the jobs it
    -- brings back by the current rule (parking again those it holds back).
    if not timer or due < timer then
      park_timer(blocker, due, n, every)
      armed = armed + 1
    end
  end
end
if armed > 0 then wake() end
return { got[1], armed }
"""


def follow_script(prelude: str) -> str:
    """The source of the walk's script, with flow control's prelude (its declarations)."""
    return _FOLLOW.replace("@PRELUDE@", prelude)


async def follow_limits(queue: JobQueue, *, changed: bool = False) -> int:
    """Walk every parked rate-limit key of ``queue`` once: arm again, by this process's
    declarations, each timer armed by another rule (``FOLLOW_SCRIPT``). Returns how many
    were armed again. ``changed`` (the limits were just changed): the walk wakes idle
    workers in any case, so the held-back jobs left in wait that a raised or removed
    limit lets start do not wait for the workers' periodic re-check. A queue closed
    during the walk ends it (its next page would open a connection again)."""
    client = await queue.client()
    cursor, armed, wake = "0", 0, "1" if changed else "0"
    for _ in range(MAX_CALLS):
        if cursor != "0":
            if not queue.ctx.connected:
                break
            client = await queue.client()
        got = await queue.scripts.call(
            client, FOLLOW_SCRIPT, queue.keys.all, [*queue.ctx.argv_head(), cursor, PAGE, wake]
        )
        cursor, armed = reply_text(got[0]), armed + int(got[1])
        if cursor == "0":
            break
        await asyncio.sleep(0)
    if armed:
        log.info(
            "queue %s: the timers of %d rate-limit key(s) with parked jobs were armed again "
            "by the rate limits declared in this process",
            queue.name,
            armed,
        )
    return armed


_PENDING: set[asyncio.Task[Any]] = set()


def _background(queue: JobQueue, again: bool) -> None:
    async def run() -> None:
        try:
            for i in range(2 if again else 1):
                if i:
                    await asyncio.sleep(FOLLOW_AGAIN_S)
                # Closed since (or while the first walk was under way): a walk would
                # connect it again, and nothing would close that client. Each walk
                # wakes the idle workers (changed): the second one for the claim a
                # woken worker sent with the previous declarations.
                if not queue.ctx.connected:
                    return
                await follow_limits(queue, changed=True)
        except Exception as exc:  # the next change, start or heal pass tries again
            log.warning("queue %s: rate-limit follow-up failed: %s", queue.name, exc)

    task = asyncio.get_running_loop().create_task(run())
    _PENDING.add(task)  # a reference until it ends (the loop keeps only weak ones)
    task.add_done_callback(_PENDING.discard)


def follow_soon(queue: JobQueue) -> None:
    """After a rate limit was set or removed: ``follow_limits`` in the background, now
    and once more ``FOLLOW_AGAIN_S`` later, when an event loop runs and the queue is
    connected (else a worker's start, or the heal, does it)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    if queue.ctx.connected:
        _background(queue, again=True)


class _FollowAtStart:
    """The walk once when a worker of the queue starts, in every process."""

    name = "flow-control-follow"

    def __init__(self) -> None:
        self._task: asyncio.Task[Any] | None = None

    async def start(self, queue: JobQueue) -> None:
        async def run() -> None:
            try:
                await follow_limits(queue)
            except Exception as exc:
                log.warning("queue %s: rate-limit follow-up failed: %s", queue.name, exc)

        self._task = asyncio.get_running_loop().create_task(run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)


def follow_service(queue: JobQueue) -> _FollowAtStart:
    """The service that runs ``follow_limits`` when a worker of ``queue`` starts."""
    return _FollowAtStart()
