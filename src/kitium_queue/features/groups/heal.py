"""Turns of FIFO message groups held by jobs that already finished, given back.

A job of a group holds one of its group's turns until the release fragment sees it end.
A process of the queue that has not created ``FIFOQueueManager`` (a worker deployed
without it, a script that forgot it) runs such a job and finishes it without passing
that fragment, so its turn stays held; once every turn of a group is held that way,
nothing of the group can be claimed and its line waits for good. The enqueue and
admission fragments heal a group they meet (a few holders at a time); ``heal_groups``
walks every group at once (``group_heal.lua``, a page per call) for the groups no new
job comes to, and the queue's workers walk them paced (``HealWalk``: ``CALLS_PER_TICK``
pages every ``TICK_S``, a pass starting at most every ``HEAL_INTERVAL_S``) in one
process at a time (``LeaderService`` ``fifo-groups-heal``), so their cost per second
does not grow with the number of groups; ``pass_bound_s`` says how long a stale turn
can stay held.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...leader import LeaderService, every
from ...limits import get_logger

if TYPE_CHECKING:
    from ...queue import JobQueue

__all__ = [
    "CALLS_PER_TICK",
    "HEAL_INTERVAL_S",
    "PAGE",
    "PER_CALL",
    "TICK_S",
    "GroupHealReport",
    "HealWalk",
    "heal_groups",
    "heal_service",
    "pass_bound_s",
]

log = get_logger(__name__)

#: Seconds between the starts of two passes of the workers' walk over a queue's groups
#: (a pass that takes longer is followed by the next one at once).
HEAL_INTERVAL_S = 30.0
#: Seconds between two steps of the workers' walk.
TICK_S = 1.0
#: Script calls (pages) per step of the workers' walk.
CALLS_PER_TICK = 2
#: Groups per script call (each call is short; Redis serves others between calls).
PAGE = 250
#: Turn holders checked per group and call.
PER_GROUP = 100
#: Turn holders checked per call: the page ends after the group that reached it.
PER_CALL = 1000


def pass_bound_s(
    groups: int,
    holders: int = 0,
    *,
    interval_s: float = HEAL_INTERVAL_S,
    tick_s: float = TICK_S,
    calls_per_tick: int = CALLS_PER_TICK,
    page: int = PAGE,
    per_call: int = PER_CALL,
) -> float:
    """Longest time (s) a turn held by a finished job can stay held while one worker
    leads the walk, for ``groups`` groups holding ``holders`` turns in all: the rest of
    the pass under way, the wait for the next pass, and that pass up to its group.
    A pass takes ``ceil(calls / calls_per_tick)`` steps: a call ends with a full page,
    with its turn-holder budget reached, or at the end of the walk, so ``calls`` is at
    most ``groups // page + holders // per_call + 1``."""
    calls = groups // page + holders // per_call + 1
    walk = math.ceil(calls / calls_per_tick) * tick_s
    return max(interval_s, walk) + walk + tick_s


@dataclass(frozen=True, slots=True)
class GroupHealReport:
    """What one walk of a queue's groups gave back.

    Attributes:
        turns_freed: turns held by jobs that had finished (or whose record was gone).
        jobs_moved: jobs of the groups' lines moved to wait with the freed turns.
        groups: groups whose line got turns.
    """

    turns_freed: int = 0
    jobs_moved: int = 0
    groups: int = 0


async def _page(
    queue: JobQueue, cursor: str, page: int, per_call: int
) -> tuple[str, int, int, int]:
    """One call of ``group_heal.lua`` from ``cursor``: (next cursor, '' at the end of the
    walk; turns freed; jobs moved; groups given turns)."""
    client = await queue.client()
    got = await queue.scripts.call(
        client,
        "group_heal",
        queue.keys.all,
        [*queue.ctx.argv_head(), cursor, page, PER_GROUP, per_call],
    )
    nxt = got[0].decode() if isinstance(got[0], bytes) else str(got[0])
    return nxt, int(got[1]), int(got[2]), int(got[3])


def _warn(queue: JobQueue, report: GroupHealReport) -> None:
    if report.turns_freed:
        log.warning(
            "queue %s: %d turn(s) of FIFO message groups were held by jobs that had "
            "already finished, given back (%d job(s) of %d group(s) moved to wait). A "
            "process of the queue without FIFOQueueManager ran them, or their records "
            "were deleted by hand: create FIFOQueueManager, with the same arguments, in "
            "every process that adds or runs the queue's jobs",
            queue.name,
            report.turns_freed,
            report.jobs_moved,
            report.groups,
        )


async def heal_groups(queue: JobQueue) -> GroupHealReport:
    """Walk every group of ``queue`` once, now: turns held by finished jobs are given
    back and the groups' lines take them (``group_heal.lua``). Logs a warning naming
    the likely cause when it freed any."""
    cursor, freed, moved, groups = "", 0, 0, 0
    while True:
        nxt, f, m, g = await _page(queue, cursor, PAGE, PER_CALL)
        freed, moved, groups = freed + f, moved + m, groups + g
        if not nxt:
            break
        cursor = nxt
        await asyncio.sleep(0)
    report = GroupHealReport(freed, moved, groups)
    _warn(queue, report)
    return report


class HealWalk:
    """The workers' walk over a queue's groups, paced: each ``step()`` runs at most
    ``calls_per_tick`` calls of ``group_heal.lua`` (``page`` groups and about
    ``per_call`` turn holders each) from where the last one stopped, and a pass
    starts at most every ``interval_s`` (by ``clock``). The Redis work of a step is
    bounded whatever the number of groups; a pass over many groups spreads over
    several steps (``pass_bound_s``). A call that fails is tried again at the next
    step, from the same group."""

    def __init__(
        self,
        queue: JobQueue,
        *,
        interval_s: float = HEAL_INTERVAL_S,
        calls_per_tick: int = CALLS_PER_TICK,
        page: int = PAGE,
        per_call: int = PER_CALL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.queue = queue
        self.interval_s = interval_s
        self.calls_per_tick = max(1, calls_per_tick)
        self.page = page
        self.per_call = per_call
        self.clock = clock
        #: The last group walked by the pass under way ('' = no pass under way).
        self.cursor = ""
        self.passes = 0
        self._started: float | None = None
        self._sums = (0, 0, 0)

    async def step(self) -> GroupHealReport | None:
        """One step of the walk; the pass's report when this step ended a pass."""
        if not self.cursor:
            now = self.clock()
            if self._started is not None and now - self._started < self.interval_s:
                return None
            self._started, self._sums = now, (0, 0, 0)
        for _ in range(self.calls_per_tick):
            nxt, f, m, g = await _page(self.queue, self.cursor, self.page, self.per_call)
            freed, moved, groups = self._sums
            self._sums = (freed + f, moved + m, groups + g)
            self.cursor = nxt
            if not nxt:
                self.passes += 1
                report = GroupHealReport(*self._sums)
                _warn(self.queue, report)
                return report
        return None


def heal_service(
    queue: JobQueue, interval_s: float = HEAL_INTERVAL_S, tick_s: float = TICK_S
) -> LeaderService:
    """The workers' paced walk of ``queue``'s groups (``HealWalk``), a step every
    ``tick_s``, in one process at a time. A process that takes the lead starts a pass
    from the first group."""

    async def serve(term: Any) -> None:
        walk = HealWalk(queue, interval_s=interval_s)
        await every(int(tick_s * 1000), walk.step, f"queue {queue.name}: FIFO groups heal")

    return LeaderService("fifo-groups-heal", serve)
