"""Turns of FIFO message groups held by jobs that already finished, given back.

A job of a group holds one of its group's turns until the release fragment sees it end.
A process of the queue that has not created ``FIFOQueueManager`` (a worker deployed
without it, a script that forgot it) runs such a job and finishes it without passing
that fragment, so its turn stays held; once every turn of a group is held that way,
nothing of the group can be claimed and its line waits for good. The enqueue and
admission fragments heal a group they meet (a few holders at a time); ``heal_groups``
walks every group (``group_heal.lua``, a page per call) for the groups no new job
comes to, and the queue's workers run it every ``HEAL_INTERVAL_S`` in one process
at a time (``LeaderService`` ``fifo-groups-heal``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...leader import LeaderService, every
from ...limits import get_logger

if TYPE_CHECKING:
    from ...queue import JobQueue

__all__ = ["HEAL_INTERVAL_S", "GroupHealReport", "heal_groups", "heal_service"]

log = get_logger(__name__)

#: Seconds between two walks of a queue's groups by its workers.
HEAL_INTERVAL_S = 30.0
#: Groups per script call (each call is short; Redis serves others between calls).
PAGE = 200
#: Turn holders checked per group and call.
PER_GROUP = 100


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


async def heal_groups(queue: JobQueue) -> GroupHealReport:
    """Walk every group of ``queue`` once: turns held by finished jobs are given back
    and the groups' lines take them (``group_heal.lua``). Logs a warning naming the
    likely cause when it freed any."""
    client = await queue.client()
    cursor, freed, moved, groups = "", 0, 0, 0
    while True:
        got = await queue.scripts.call(
            client,
            "group_heal",
            queue.keys.all,
            [*queue.ctx.argv_head(), cursor, PAGE, PER_GROUP],
        )
        nxt = got[0].decode() if isinstance(got[0], bytes) else str(got[0])
        freed, moved, groups = freed + int(got[1]), moved + int(got[2]), groups + int(got[3])
        if not nxt:
            break
        cursor = nxt
        await asyncio.sleep(0)
    report = GroupHealReport(freed, moved, groups)
    if freed:
        log.warning(
            "queue %s: %d turn(s) of FIFO message groups were held by jobs that had "
            "already finished, given back (%d job(s) of %d group(s) moved to wait). A "
            "process of the queue without FIFOQueueManager ran them, or their records "
            "were deleted by hand: create FIFOQueueManager, with the same arguments, in "
            "every process that adds or runs the queue's jobs",
            queue.name,
            freed,
            moved,
            groups,
        )
    return report


def heal_service(queue: JobQueue, interval_s: float = HEAL_INTERVAL_S) -> LeaderService:
    """The workers' walk of ``queue``'s groups, every ``interval_s``, in one process at
    a time."""

    async def step() -> None:
        await heal_groups(queue)

    async def serve(term: Any) -> None:
        await every(int(interval_s * 1000), step, f"queue {queue.name}: FIFO groups heal")

    return LeaderService("fifo-groups-heal", serve)
