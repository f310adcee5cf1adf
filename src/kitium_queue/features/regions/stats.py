"""``get_global_stats()``: every region's health, role, epoch, lease, replication lag and
counts, in one snapshot."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ...queue import QueueStats
from .record import RegionCopy
from .replication import Lag, Replicator
from .topology import Topology

__all__ = ["GlobalStats", "RegionStats", "collect_stats"]


@dataclass(frozen=True)
class RegionStats:
    """One region.

    Attributes:
        region: its name; ``role``: ``"primary"`` or ``"secondary"`` (as the view has it).
        healthy: it answered the last health check; ``error``: why not;
            ``down_for_ms``: since when it does not answer; ``latency_ms``: of the check.
        epoch / primary: the epoch and primary its own record knows.
        serving: it takes new jobs as the primary now; ``lease_ms``: what is left of its
            lease as the primary.
        priority: its promotion priority.
        queue: counts of its copy of the global queue (None when unreachable).
        pinned: counts of the jobs pinned to it (its own queue).
        lag_entries / lag_ms: secondaries: outbox entries of the primary it has not
            applied yet, and the age of the oldest (None: unknown, e.g. unreachable).
        position: the last replication position it applied (an outbox entry id).
        stranded: stranded records kept in it (see ``GlobalQueueManager.stranded``).
    """

    region: str
    role: str
    healthy: bool
    epoch: int | None
    primary: str | None
    serving: bool
    lease_ms: int
    priority: int
    latency_ms: float | None
    down_for_ms: int
    error: str
    queue: QueueStats | None
    pinned: QueueStats | None
    lag_entries: int | None
    lag_ms: int | None
    position: str
    stranded: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class GlobalStats:
    """Every region, plus the view: ``primary`` of ``epoch`` (``serving``: it takes new
    jobs now), the replication ``mode`` (``async``, ``sync`` or ``off``)."""

    name: str
    primary: str | None
    epoch: int | None
    serving: bool
    mode: str
    regions: list[RegionStats] = field(default_factory=list)

    def region(self, name: str) -> RegionStats:
        return next(r for r in self.regions if r.region == name)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


async def _one(topo: Topology, rep: Replicator, c: RegionCopy, timeout: float) -> RegionStats:
    view = topo.view
    rec = c.record if c.reachable else None
    queue = pinned = None
    lag: Lag | None = None
    stranded = 0
    if c.reachable:
        try:
            queue, pinned = await asyncio.wait_for(
                asyncio.gather(c.lane.get_stats(), c.home.get_stats()), timeout
            )
            client = await c.lane.client()
            stranded = int(await client.zcard(c.lane.keys.extra("rg:stranded")))
        except Exception:  # reported through health; the counts stay unknown
            queue = pinned = None
    p = topo.primary_copy()
    if p is not None and p is not c and p.reachable and topo.cfg.replication.enabled:
        try:
            lag = await asyncio.wait_for(rep.lag(p, c), timeout)
        except Exception:
            lag = None
    return RegionStats(
        region=c.name,
        role="primary" if c.name == view.primary else "secondary",
        healthy=bool(c.reachable),
        epoch=None if rec is None else rec.epoch,
        primary=None if rec is None else rec.primary,
        serving=rec is not None and rec.serving,
        lease_ms=0 if rec is None else min(rec.lease_left_ms, 2**31),
        priority=c.priority,
        latency_ms=c.latency_ms,
        down_for_ms=int(c.down_for_s() * 1000),
        error=c.error,
        queue=queue,
        pinned=pinned,
        lag_entries=None if lag is None else lag.entries,
        lag_ms=None if lag is None else lag.ms,
        position=(rec.pos if rec is not None else ""),
        stranded=stranded,
    )


async def collect_stats(topo: Topology, rep: Replicator, timeout: float) -> GlobalStats:
    """A snapshot of every region (checked now)."""
    await topo.refresh()
    regions = await asyncio.gather(*(_one(topo, rep, c, timeout) for c in topo.copies))
    cfg = topo.cfg.replication
    return GlobalStats(
        name=topo.cfg.name,
        primary=topo.view.primary,
        epoch=topo.view.epoch,
        serving=topo.view.serving,
        mode="off" if not cfg.enabled else cfg.mode,
        regions=list(regions),
    )
