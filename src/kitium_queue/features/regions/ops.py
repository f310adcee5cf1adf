"""``replicate_job`` and the stranded-work calls of ``GlobalQueueManager``
(a mixin: the manager's class stays one job's worth of code), and ``Observed``: the
regions as read by a manager that only observes them (``GlobalQueueManager.observe``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from ...errors import ConfigurationError, JobNotFoundError
from .copying import apply, as_entry, export
from .election import View, derive_view
from .errors import RegionUnavailableError
from .lua import RECORD
from .record import Record, RegionCopy
from .stranded import StrandedJob, discard, listing, resubmit
from .topology import Topology

if TYPE_CHECKING:
    from ...queue import JobQueue

__all__ = ["Observed", "RegionOps", "peek"]

#: Deadline of the first contact with a region (as ``GlobalQueueManager.initialize``).
_FIRST_CONTACT_S = 10.0


async def peek(c: RegionCopy) -> Record | None:
    """Region ``c``'s record, read as ``RegionCopy.check`` reads it (and with the same
    health bookkeeping) but without ``region.lua``, whose every op claims a record that
    has no region yet: one HMGET and the server's clock, nothing written. None when the
    region did not answer."""
    started = time.monotonic()
    try:
        client = await asyncio.wait_for(c.lane.client(), c.timeout_s)
        pipe = client.pipeline(transaction=False)
        pipe.hmget(c.lane.keys.extra("rg"), *RECORD[:-1])
        pipe.time()
        values, (sec, usec) = await asyncio.wait_for(pipe.execute(), c.timeout_s)
    except Exception as exc:  # any failure: the region does not answer us now
        c.unanswered(exc, started)
        return None
    now = int(sec) * 1000 + int(usec) // 1000
    rec = Record.parse(["ok", "", *(b"" if v is None else v for v in values), now])
    if rec.region and rec.region != c.name:
        raise ConfigurationError(
            f"the Redis of region {c.name!r} ({c.describe()}) holds the queue "
            f"{c.lane.name!r} of region {rec.region!r}: two regions are configured with "
            "the same Redis (and key prefix). Give each region its own deployment"
        )
    return c.answered(rec, started)


class Observed(Topology):
    """The regions as a manager that only observes them sees them: ``refresh`` reads the
    records with ``peek`` (it claims no record, renews no lease, tells no region of an
    epoch). A record that never existed reads with an empty ``region``."""

    async def refresh(self) -> View:
        recs = await asyncio.gather(*(peek(c) for c in self.copies))
        self.view = derive_view({c.name: r for c, r in zip(self.copies, recs, strict=True)})
        return self.view


class _Host(Protocol):
    name: str

    def _build(self, config: Any, kind: type[Topology]) -> Any: ...

    async def _shutdown(self) -> None: ...

    @property
    def queues(self) -> list[JobQueue]: ...

    def _topo(self) -> Topology: ...

    def parse_id(self, job_id: str) -> tuple[int, str] | None: ...

    def not_found(self, job_id: Any) -> JobNotFoundError: ...


class RegionOps:
    """``observe``, ``replicate_job``, ``stranded``, ``resubmit_stranded``,
    ``discard_stranded``."""

    async def observe(self: _Host, config: Any = None) -> None:
        """Instead of ``initialize``: connect to every region and read what their records
        say, writing nothing: no record is claimed, no election held, no lease renewed,
        no region told of a newer epoch (``get_global_stats`` then reports the regions as
        they are: ``kitium-queue regions status``). For reports only: such a manager
        keeps no primary serving, and is not for adding or working on jobs. A queue that
        was never initialized reads as records with no ``region``."""
        self._build(config, Observed)
        topo = self._topo()
        try:
            await asyncio.gather(*(c.connect(_FIRST_CONTACT_S) for c in topo.copies))
            await topo.refresh()
        except BaseException:
            await self._shutdown()
            raise

    async def replicate_job(self: _Host, job_id: str, regions: Iterable[str]) -> dict[str, str]:
        """Copy job ``job_id``, as it is now, to ``regions`` (each gets it now, whatever
        the asynchronous replication does). A job of the global queue is copied into
        those regions' copies of it; a job pinned to a region into their copies of that
        region's queue, fenced: never run there. Returns, per region, ``"added"``,
        ``"exists"``, ``"ended"``, or the error that prevented the copy."""
        topo = self._topo()
        found = self.parse_id(job_id)
        if found is None:
            raise self.not_found(job_id)
        index, inner = found
        n = len(topo.copies)
        if index < n:
            source_region, source = topo.view.primary, self.queues[index]
        else:
            source_region = topo.copies[index - n].name
            source = topo.copies[index - n].home
        if isinstance(regions, (str, bytes)) or not isinstance(regions, Iterable):
            raise ConfigurationError(
                f"regions must be a list of region names, got {type(regions).__name__}"
            )
        targets: list[str] = []
        for t in regions:
            topo.copy(t)  # ConfigurationError for anything but a configured region
            if t not in targets:
                targets.append(t)
        rows = await export(source, [inner])
        if not rows or rows[0]["op"] in (b"gone", "gone"):
            raise JobNotFoundError(f"job {job_id!r} does not exist in region {source_region}")
        entry = as_entry(rows[0], "put")

        async def one(name: str) -> str:
            if name == source_region:
                return "source"
            c = topo.copy(name)
            q = c.lane if index < n else await c.copy_of(str(source_region))
            (status,) = await asyncio.wait_for(apply(q, [entry]), max(1.0, c.timeout_s * 2))
            return status

        got = await asyncio.gather(*(one(t) for t in targets), return_exceptions=True)
        return {
            t: (g if isinstance(g, str) else f"error: {type(g).__name__}: {g}"[:300])
            for t, g in zip(targets, got, strict=True)
        }

    async def stranded(self: _Host) -> list[StrandedJob]:
        """Jobs and outcomes former primaries accepted and never replicated, recorded
        when they rejoined (see docs/multi-region.md); oldest first."""
        topo = self._topo()
        out: list[StrandedJob] = []
        for c in topo.reachable():
            out += await listing(c)
        return sorted(out, key=lambda s: s.detected_ms)

    async def resubmit_stranded(self: _Host, ids: Iterable[str] | None = None) -> dict[str, str]:
        """Apply stranded records (all, or ``ids``) to the current primary: jobs are
        added with their ids (not when their idempotency key names another job there:
        ``duplicate``), outcomes end the job if it has not run again. Per id the status
        (``added``, ``exists``, ``duplicate``, ``ended``, ``requeued``, ``erased``,
        ``gone``, ``refused``). The regions are checked first unless this process's view
        says a primary serves (one without the background loop has no fresh view)."""
        topo = self._topo()
        view = topo.view if topo.view.serving else await topo.refresh()
        primary = topo.primary_copy()
        if primary is None or not view.serving:
            raise RegionUnavailableError(f"queue {self.name!r} has no serving primary now")
        wanted = None if ids is None else set(ids)
        out: dict[str, str] = {}
        for c in topo.reachable():
            mine = [s.id for s in await listing(c) if wanted is None or s.id in wanted]
            if mine:
                out.update(await resubmit(c, primary.lane, mine))
        return out

    async def discard_stranded(self: _Host, ids: Iterable[str]) -> int:
        """Forget stranded records without applying them; how many there were."""
        topo = self._topo()
        ids = list(ids)
        return sum([await discard(c, ids) for c in topo.reachable()])
