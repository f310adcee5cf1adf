"""Job records that no state set lists (*orphans*): found, reported and put back.

Every job record (``job:<id>``, a hash) names its status in ``st``, and the set of that
status lists it: ``wait``, ``active``, ``delayed``, ``completed``, ``failed``, ``dlq``, or
for a pending job the parked set of its blocker. A record that no set lists is lost
without a trace: no worker claims it, no listing shows it, no retention removes it. The
scripts never leave one behind, but Redis can:

* a whole state set **evicted** under an evicting ``maxmemory-policy`` (accepted only
  with ``settings={"allow_eviction": True}``: see docs/pressure.md), or deleted or
  overwritten by hand;
* a command **refused in the middle of a script** (an ACL rule taken away while a worker
  runs): Redis never rolls a script back, so the jobs it was moving are in no set.

The scripts count the opposite loss as they meet it (a set that lists a record gone:
``QueueStats.missing_records``); this one needs a walk of every record. ``find_orphans``
walks them with ``SCAN`` (``lua/orphans.lua``, ``PAGE`` records per script call, each
atomic and short, then three times as long a pause, so workers keep running meanwhile)
and reports what it found; with
``repair=True`` it puts each orphan back where its status says (``OrphanReport``).
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError
from .limits import get_logger, reply_text
from .records import job_id_pages

if TYPE_CHECKING:
    from .queue import JobQueue

__all__ = ["LISTED", "PAGE", "OrphanReport", "find_orphans", "walk"]

log = get_logger(__name__)

#: Job records one script call examines (three or four commands each: a call takes a
#: few milliseconds, so it never blocks Redis for long).
PAGE = 500
#: Job ids an ``OrphanReport`` names at most (its counts cover all of them).
LISTED = 100
_SCRIPT = "orphans"


@dataclass(frozen=True, slots=True)
class OrphanReport:
    """What ``find_orphans`` found, and with ``repair`` put back.

    Attributes:
        repaired: True when the orphans were put back (``repair=True``); False for a
            report only (nothing written).
        examined: job records examined (a record the walk met twice counts twice).
        orphans: records no state set listed, with a status that names one (or a name
            and no status: waiting): put back where it says when ``repaired``. A record
            the walk met twice (``SCAN`` may return a key twice) counts twice.
        by_status: ``orphans`` by their status (``waiting``, ``delayed``, ``active``,
            ``completed``, ``failed``, ``dlq``).
        parked: pending records their blocker's set lacks, left for
            ``parking.rebuild_parked`` (it knows each blocker's rules).
        unknown: records with a status no set stands for, or with neither a status nor
            a name: left alone.
        damaged: ``job:`` keys holding another Redis type than a hash: left alone
            (claim, promote and recovery dead-letter one when they meet it).
        job_ids: the first ``LISTED`` orphans.
        other_ids: the first ``LISTED`` parked or unknown records.
    """

    repaired: bool
    examined: int = 0
    orphans: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    parked: int = 0
    unknown: int = 0
    damaged: int = 0
    job_ids: tuple[str, ...] = ()
    other_ids: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready values."""
        out = asdict(self)
        out["job_ids"] = list(self.job_ids)
        out["other_ids"] = list(self.other_ids)
        return out


async def find_orphans(
    queue: JobQueue, *, repair: bool = False, lease_ms: int | None = None
) -> OrphanReport:
    """Find the job records of ``queue`` that no state set lists; with ``repair``, put
    each back where its status says.

    Put back: a waiting job into ``wait`` at its own place (priority, enqueue order); a
    delayed one into ``delayed`` at its due time (into ``wait`` when that has passed); a
    finished one (completed, failed, dead-lettered) into its set at its finish time,
    where retention trims it as any other; a running one into ``active`` with its lease
    ending ``lease_ms`` from now (default: the queue's ``lock_duration``), so a worker
    still running it keeps its run, and when none does, recovery runs it again as a
    stalled run. A record listed in any state set is never touched (a job is never put
    in two places); pending jobs their blocker's set lacks are counted, not moved: run
    ``parking.rebuild_parked`` for them.

    The walk reads every record of the queue once (``SCAN``, then one script call per
    ``PAGE`` records: three or four Redis commands per record); a record added while it
    runs may be missed, and is sound anyway. Run it after eviction, after a worker
    reported a command refused by an ACL rule, or when counts do not add up.

    Args:
        queue: the queue (a ``PartitionedQueue``: call it for each of ``queue.queues``).
        repair: put the orphans back (default: report only, nothing written).
        lease_ms: the lease given back to a running orphan, in ms (100 to a day).

    Returns an ``OrphanReport``. Runs as the admin command ``find_orphans`` (guards,
    audit). Needs ``SCAN`` besides the engine's commands. Raises ``DamagedKeyError``
    when repairing and a state set or the marker holds another Redis type: repair that
    key first.
    """
    if not hasattr(queue, "ctx"):  # a PartitionedQueue: its partitions are queues
        raise ConfigurationError(
            f"find_orphans takes one queue, not {type(queue).__name__}: call it for each "
            "of queue.queues (the CLI's jobs orphans walks every partition of a "
            "partitioned APP)"
        )
    if not isinstance(repair, bool):
        raise ConfigurationError(f"repair must be True or False, got {repair!r:.100}")
    if lease_ms is None:
        lease = int(queue.ctx.lock_duration_ms)
    elif isinstance(lease_ms, bool) or not isinstance(lease_ms, int):
        raise ConfigurationError(f"lease_ms must be an int of ms, got {lease_ms!r:.100}")
    elif not 100 <= lease_ms <= 86_400_000:
        raise ConfigurationError(f"lease_ms must be 100 to 86400000 (a day), got {lease_ms}")
    else:
        lease = lease_ms

    async def action() -> OrphanReport:
        return await _Walk(queue, repair, lease).run()

    args = {"repair": repair, "lease_ms": lease_ms}
    return await queue.admin.execute("find_orphans", args, action)


async def walk(queue: JobQueue, *, repair: bool) -> OrphanReport:
    """``find_orphans`` as the engine runs it by itself (a worker whose rights came back
    after a script was refused part-way), as the heals run: not an administrative
    command of a principal, so without its guards; leases of ``lock_duration``."""
    return await _Walk(queue, repair, int(queue.ctx.lock_duration_ms)).run()


class _Walk:
    """One run of ``find_orphans``: the walk of the job records and the tallies."""

    def __init__(self, queue: JobQueue, repair: bool, lease: int) -> None:
        self.ctx = queue.ctx
        self.repair = repair
        self.head = ["1" if repair else "0", str(lease)]
        self.examined = self.parked = self.unknown = self.damaged = 0
        self.by_status: dict[str, int] = {}
        # The first LISTED of each (insertion-ordered): a walk after a whole set went
        # meets millions; the counts cover them all.
        self.found: dict[str, None] = {}
        self.other: dict[str, None] = {}

    async def run(self) -> OrphanReport:
        async for page in job_id_pages(self.ctx, PAGE):
            await self._page(page)
        by_status = self.by_status
        report = OrphanReport(
            repaired=self.repair,
            examined=self.examined,
            orphans=sum(by_status.values()),
            by_status=by_status,
            parked=self.parked,
            unknown=self.unknown,
            damaged=self.damaged,
            job_ids=tuple(self.found),
            other_ids=tuple(self.other),
        )
        if report.orphans:
            counts = ", ".join(f"{n} {s}" for s, n in sorted(by_status.items()))
            log.warning(
                "queue %s: %d job records no state set listed (%s) %s",
                self.ctx.name,
                report.orphans,
                counts,
                "were put back"
                if self.repair
                else "were found; find_orphans(queue, "
                "repair=True) (CLI: kitium-queue jobs orphans APP --repair) puts them back",
            )
        return report

    async def _page(self, ids: list[bytes]) -> None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        examined, found, parked, unknown, damaged, odd = await self.ctx.run(
            _SCRIPT, [*self.head, *ids]
        )
        # Three times as long idle: the walk takes at most a quarter of Redis's time (and
        # of the event loop's, beside a worker), so the queue's own work goes on.
        await asyncio.sleep(3 * (loop.time() - began))
        self.examined += int(examined)
        self.parked += int(parked)
        self.unknown += int(unknown)
        self.damaged += int(damaged)
        for i in range(0, len(found), 2):
            status = reply_text(found[i])
            self.by_status[status] = self.by_status.get(status, 0) + 1
            if len(self.found) < LISTED:
                self.found[reply_text(found[i + 1])] = None
        for b in odd[: max(0, LISTED - len(self.other))]:
            self.other[reply_text(b)] = None
