"""Jobs parked behind a concurrency key that nothing would release, sent back to wait.

Flow control parks a job whose concurrency key is at its cap behind blocker
``'cc:<key>'``; the release fragment brings one back each time a *counted* job of the
key leaves active. Two things break that chain and leave the key's parked jobs pending
for good:

* the cap is removed (``queue.flow.remove_concurrency_limit``, or a new release that no
  longer declares it) or raised: the next job runs uncounted (or one more is never let
  in), and no release brings the rest back;
* a process of the queue without flow control (a worker of the previous release during a
  rolling deploy) runs the key's jobs: their finish passes no release fragment, so
  nothing is unparked (and a counted job it recovered stays in the key's running set).

``heal_concurrency`` walks every parked blocker ``'cc:<key>'`` (``HEAL_SCRIPT``, a page
of the parked index per call) and, for each key, drops the members of its running set
whose job is no longer active, then moves ``cap - running`` of its parked jobs back to
wait (all of them when this process declares no cap for the key any more). Claim judges
each one again, so a job let out too many is parked again, in its place. The queue's
workers with flow control run it every ``HEAL_INTERVAL_S`` in one process at a time
(``LeaderService`` ``flow-control-heal``); ``queue.flow.heal()`` runs it now.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..explain import Reason
from ..leader import LeaderService, every
from ..limits import get_logger, reply_text
from . import flowpark

if TYPE_CHECKING:
    from ..queue import JobQueue
    from .flowcontrol import FlowControl

__all__ = [
    "HEAL_INTERVAL_S",
    "HEAL_SCRIPT",
    "LET_OUT_MS",
    "RELEASE",
    "ConcurrencyHealReport",
    "cap_reason",
    "heal_concurrency",
    "heal_script",
    "heal_service",
    "heal_soon",
]

log = get_logger(__name__)

#: Seconds between two walks of a queue's parked concurrency keys by its workers.
HEAL_INTERVAL_S = 30.0
#: How long a job let out of a key's parked set (to wait, not running yet) counts
#: against the key's cap for the heal (``cc-out:<key>``, written by flow control's
#: release), in ms: two heal intervals. A key left stranded meanwhile is healed later.
LET_OUT_MS = 60_000
#: The script's name in the queue's registry (compiled with the declarations).
HEAL_SCRIPT = "cc_heal"
#: Index entries scanned per script call (ZSCAN COUNT: each call is short).
PAGE = 100
#: Members of a key's running set checked per key and call.
PER_KEY = 100
#: Script calls per walk at most: a walk ends even while another process keeps parking
#: the jobs it releases (a process that still declares a cap this one dropped).
MAX_CALLS = 10_000

_LUA = """--[[
  cc_heal.lua: jobs parked behind a concurrency key that nothing would release, back to
  wait (kitium_queue.features.flowheal), one page of the parked index per call.

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]  ZSCAN cursor of the parked index ('0' = from the start)
  ARGV[5]  index entries scanned per call (COUNT), clamped to 1..1000
  ARGV[6]  running-set members checked per key, clamped to 1..1000
  Returns { next cursor ('0' = the walk is over; the same one when this call's budget of
  moved jobs ran out), members dropped, jobs moved to wait, keys given jobs, keys
  released for want of a cap }. Every key written is checked before the first write:
  wait, meta, marker and cc-of fail the call (KQ_DAMAGED_KEY, nothing written); a key's
  own running set or parked set holding another type skips that key.
]]
--@include lib_base
--@include lib_jobs
--@include lib_events
--@include lib_parking
--@include lib_park_timers
@PRELUDE@

local cursor = ARGV[4] or '0'
if not string.match(cursor, '^%d+$') then return bad_arg('cc_heal', 'bad cursor') end
local page = arg_int(ARGV[5], 100, 1, 1000)
local per_key = arg_int(ARGV[6], 100, 1, 1000)
local bad = check_keys(1, 7, 9) or check_key(CC_OWNER, 'hash')
if bad then return bad end
if redis.call('TYPE', K_PARKED)['ok'] ~= 'zset' then return { '0', 0, 0, 0, 0 } end
local got = redis.call('ZSCAN', K_PARKED, cursor, 'MATCH', 'cc:*', 'COUNT', page)
local budget = UNPARK_MAX
local dropped, moved, keys, uncapped = 0, 0, 0, 0
for i = 1, #got[2], 2 do
  if budget <= 0 then break end
  local blocker = got[2][i]
  local ck = string.sub(blocker, 4)
  local skey = PREFIX .. 'cc:' .. ck
  local n = redis.pcall('SCARD', skey)
  local pt = redis.call('TYPE', PARKED_PREFIX .. blocker)['ok']
  if type(n) == 'number' and pt == 'zset' then
    if n > 0 then
      local ids
      if n <= per_key then
        ids = redis.call('SMEMBERS', skey)
      else
        ids = redis.call('SRANDMEMBER', skey, per_key)
      end
      for j = 1, #ids do
        local st = redis.pcall('HGET', job_key(ids[j]), 'st')
        -- As running() does: a damaged record counts (recovery releases it).
        if not (st == 'active' or (st and type(st) ~= 'string')) then
          redis.call('HDEL', CC_OWNER, ids[j])
          redis.call('SREM', skey, ids[j])
          n, dropped = n - 1, dropped + 1
        end
      end
    end
    local cap = ANY_CAP and lookup('c', CAP_EXACT, CAP_PREFIX, ck)
    local free = budget
    if cap then
      -- Jobs a release let out lately wait to run: they count against the cap too.
      local out = redis.pcall('GET', PREFIX .. 'cc-out:' .. ck)
      if type(out) == 'table' then out = 0 end
      free = math.min(cap - n - math.floor(tonumber(out) or 0), budget)
    end
    if free > 0 then
      local k = unpark(blocker, free)
      if k > 0 then
        moved, keys, budget = moved + k, keys + 1, budget - k
        if not cap then uncapped = uncapped + 1 end
      end
    end
  end
end
local nxt = got[1]
if budget <= 0 then nxt = cursor end
return { nxt, dropped, moved, keys, uncapped }
"""


def heal_script(prelude: str) -> str:
    """The source of the heal script, with flow control's prelude (its declarations)."""
    return _LUA.replace("@PRELUDE@", prelude)


@dataclass(frozen=True, slots=True)
class ConcurrencyHealReport:
    """What one walk of a queue's parked concurrency keys did.

    Attributes:
        members_dropped: members of running sets whose job was no longer active.
        jobs_moved: parked jobs moved back to wait.
        keys: concurrency keys whose jobs were moved.
        uncapped_keys: of those, keys with no cap declared in this process.
    """

    members_dropped: int = 0
    jobs_moved: int = 0
    keys: int = 0
    uncapped_keys: int = 0


async def heal_concurrency(queue: JobQueue) -> ConcurrencyHealReport:
    """Walk every parked concurrency key of ``queue`` once, with this process's
    declarations: stale running members dropped, the free number of parked jobs moved
    back to wait. Logs a warning naming the likely cause when it moved any."""
    client = await queue.client()
    cursor, total = "0", [0, 0, 0, 0]
    for _ in range(MAX_CALLS):
        got = await queue.scripts.call(
            client,
            HEAL_SCRIPT,
            queue.keys.all,
            [*queue.ctx.argv_head(), cursor, PAGE, PER_KEY],
        )
        cursor = reply_text(got[0])
        total = [t + int(g) for t, g in zip(total, got[1:5], strict=True)]
        if cursor == "0":
            break
        await asyncio.sleep(0)
    report = ConcurrencyHealReport(*total)
    if report.jobs_moved:
        log.warning(
            "queue %s: %d job(s) parked behind %d concurrency key(s) had nothing left to "
            "release them and went back to wait (%d of the keys have no cap declared here "
            "any more; %d counted job(s) were no longer running). Likely cause: a "
            "concurrency cap was removed or raised, or a process of the queue without "
            "flow control ran jobs of these keys: declare the same limits in every "
            "process that adds or runs the queue's jobs",
            queue.name,
            report.jobs_moved,
            report.keys,
            report.uncapped_keys,
            report.members_dropped,
        )
    return report


_PENDING: set[asyncio.Task[Any]] = set()
#: The second heal after a cap was removed (``heal_soon``), in seconds.
HEAL_AGAIN_S = 1.0


def heal_soon(queue: JobQueue) -> None:
    """Run ``heal_concurrency`` in the background (after a cap was declared, raised or
    removed) when an event loop is running and the queue is connected; else a worker's
    start (its heal leader walks at once) or the workers' next heal pass does it."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    if not queue.ctx.connected:  # a heal would connect it, and nothing would close that
        return

    async def run() -> None:
        try:
            for i in range(2):
                if i:
                    # Once more a moment later: a worker's wake-up wait is sent with its
                    # claim (composed before the change, with the old cap's check), which
                    # runs as soon as the heal's release wakes it and parks them again.
                    await asyncio.sleep(HEAL_AGAIN_S)
                if not queue.ctx.connected:  # closed since
                    return
                await heal_concurrency(queue)
        except Exception as exc:  # the workers' next pass tries again
            log.warning("queue %s: flow-control heal failed: %s", queue.name, exc)

    task = loop.create_task(run())
    _PENDING.add(task)  # a reference until it ends (the loop keeps only weak ones)
    task.add_done_callback(_PENDING.discard)


def heal_service(queue: JobQueue, interval_s: float = HEAL_INTERVAL_S) -> LeaderService:
    """The workers' walk of ``queue``'s parked concurrency keys (and of its parked
    rate-limit keys: ``flowpark.follow_limits``), at once when a process starts leading,
    then every ``interval_s``, in one process at a time."""

    async def step() -> None:
        await heal_concurrency(queue)
        await flowpark.follow_limits(queue)  # rate-limit timers armed by another rule

    async def serve(term: Any) -> None:
        await every(int(interval_s * 1000), step, f"queue {queue.name}: flow-control heal")

    return LeaderService("flow-control-heal", serve)


async def cap_reason(flow: FlowControl, client: Any, ck: str, parked: bool) -> Reason | None:
    """``explain``'s reason for a job of concurrency key ``ck`` (``parked``: behind its
    blocker): at its cap, or, parked with fewer running than the cap or no cap declared
    here, stranded until the heal releases it."""
    keys = flow.queue.keys
    cap = flow.limit_of(ck, flow.concurrency_limits)
    pipe = client.pipeline(transaction=False)
    pipe.scard(keys.extra(f"cc:{ck}"))
    pipe.srandmember(keys.extra(f"cc:{ck}"), 5)
    n, some = await pipe.execute()
    ids = sorted(reply_text(i) for i in some)
    # Members whose job is no longer active (a process without flow control finished
    # it) hold no slot: not counted, not named (exact for a set of up to 5).
    pipe = client.pipeline(transaction=False)
    for i in ids:
        pipe.hget(keys.job(i), "st")
    states = await pipe.execute(raise_on_error=False)
    gone = {
        i
        for i, st in zip(ids, states, strict=True)
        if st is None or (isinstance(st, (bytes, str)) and reply_text(st) != "active")
    }
    n, ids = int(n) - len(gone), [i for i in ids if i not in gone]
    refs = (("key", ck), *(("job", i) for i in ids))
    running = ", ".join("job " + i for i in ids) or "none"
    if parked and (cap is None or n < cap):
        why = "no cap declared in this process" if cap is None else f"{n} of {cap} running"
        return Reason(
            "concurrency-cap",
            f"parked behind concurrency key {ck!r}, which has {why} (e.g. {running}): no "
            "finishing job of the key will let it in; the workers' flow-control heal "
            f"moves it back to wait within {HEAL_INTERVAL_S:.0f} s (queue.flow.heal() "
            "does it now)",
            refs=refs,
            source="flow-control",
        )
    if (cap is not None and n >= cap) or parked:
        return Reason(
            "concurrency-cap",
            f"concurrency key {ck!r} is at its cap: {n} of {cap} running (e.g. {running}); "
            "the next one to finish lets it in",
            refs=refs,
            source="flow-control",
        )
    return None


# Flow control's release fragment (flowcontrol.py installs it). Runs for every job
# leaving active (finish, recovery, clear): exact accounting of the concurrency sets,
# and the next job of the key back to wait (counted in cc-out:<key> for the heal).
RELEASE = """(function()
  local CC_OWNER = PREFIX .. 'cc-of'
  return function(id, jk, outcome, payload, context, marked)
    -- marked: the job's concurrency key field (ck) as finish read it. False: the job
    -- names no key, so no slot of a key was taken for it (commit records one only for
    -- a job with ck): nothing to do, no command. nil (the other ways out of active):
    -- look it up.
    if marked == false then return end
    local ck = redis.call('HGET', CC_OWNER, id)
    if not ck then return end
    redis.call('HDEL', CC_OWNER, id)
    redis.call('SREM', PREFIX .. 'cc:' .. ck, id)
    if unpark('cc:' .. ck, 1) > 0 then  -- let out: the heal counts it a while (flowheal)
      local out = PREFIX .. 'cc-out:' .. ck
      local was = redis.pcall('GET', out)  -- another type (written by hand): left alone
      if type(was) ~= 'table' then
        redis.call('SET', out, int(math.floor(tonumber(was) or 0) + 1), 'PX', @OUT_MS@)
      end
    end
  end
end)()""".replace("@OUT_MS@", str(LET_OUT_MS))
