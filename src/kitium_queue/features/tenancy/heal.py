"""Tenants' tickets and running slots held by jobs that already left, given back.

A process of the queue without tenancy (a worker of the previous release during a
rolling deploy) claims a tenant's jobs from wait and finishes them without passing the
tenancy fragments, so their dispatch tickets (and the tenant's count of unfinished
jobs) stay taken. Once all of a tenant's tickets are held that way its lane is never
refilled and its jobs wait for good. Each worker's tenancy sync (every
``SYNC_INTERVAL_S``) runs ``heal_tenants`` for the queue's tenants after copying their
quotas: ``tn_heal.lua`` checks every holder of the tenants that have a lane (and of the
removed ones, lane or not: a stale holder would keep their copy from being retired),
takes the stale ones off (a finished job leaves the count too) and refills the lane.
A ticket held by a job another feature took out of wait before it started (parked
behind its blocker, or delayed by a debounce) is given back too, without a warning: no
process without tenancy is involved (the fragments give such tickets back at once; this
finds those taken out before they did, or by a way they do not see).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...limits import get_logger

if TYPE_CHECKING:
    from ...queue import JobQueue

__all__ = ["SCRIPT", "TenantHealReport", "heal_tenants"]

log = get_logger(__name__)

#: The script's name in the queue's registry.
SCRIPT = "tn_heal"
#: Tenants per script call (the script reads at most 100).
_PER_CALL = 100


@dataclass(frozen=True, slots=True)
class TenantHealReport:
    """What one heal gave back, over the tenants it checked.

    Attributes:
        tickets: dispatch tickets held by jobs no longer in wait.
        running: running slots held by jobs no longer active.
        jobs_moved: jobs of the tenants' lanes moved to wait.
        parked: dispatch tickets held by jobs out of wait that had not started (parked
            behind another feature's blocker, or delayed): given back, no warning.
    """

    tickets: int = 0
    running: int = 0
    jobs_moved: int = 0
    parked: int = 0


async def heal_tenants(queue: JobQueue, tenants: Sequence[str]) -> TenantHealReport:
    """Give back the stale tickets and running slots of ``tenants`` in ``queue`` and
    refill their lanes. Logs a warning naming the likely cause when any was held by a
    job that ran or is gone (tickets of jobs parked aside only at debug level)."""
    client = await queue.client()
    tickets = running = moved = parked = 0
    names = list(tenants)
    for i in range(0, len(names), _PER_CALL):
        got = await queue.scripts.call(
            client, SCRIPT, queue.keys.all, [*queue.ctx.argv_head(), *names[i : i + _PER_CALL]]
        )
        tickets, running, moved = tickets + int(got[0]), running + int(got[1]), moved + int(got[2])
        parked += int(got[3]) if len(got) > 3 else 0
    report = TenantHealReport(tickets, running, moved, parked)
    if parked:
        log.debug(
            "queue %s: %d dispatch ticket(s) of tenants held by jobs parked aside or delayed "
            "given back",
            queue.name,
            parked,
        )
    if tickets or running:
        log.warning(
            "queue %s: %d dispatch ticket(s) and %d running slot(s) of tenants were held by "
            "jobs that had already left (a process of the queue without tenancy ran them, "
            "or their records were deleted by hand); given back, %d job(s) moved to wait. "
            "Enable tenancy, with the same arguments, in every process that adds or runs "
            "the queue's jobs",
            queue.name,
            tickets,
            running,
            moved,
        )
    return report
