"""``failover_to(region)``: a promotion by hand.

* **Planned** (the primary answers): the primary steps down (it takes no new job and
  hands none out from then on), the jobs running there get ``drain_timeout_ms`` to
  finish, everything the target has not applied yet is replicated to it, the other
  regions withdraw their grants to the old primary, and the target is elected. Nothing
  acknowledged is lost and nothing runs twice (unless a job outlives the drain). If the
  election fails, the old primary resumes.
* **Unplanned** (the primary is unreachable): the target is elected as soon as the
  majority's grants to the old primary have lapsed (at most ``lease_ms``); what the old
  primary had not replicated is reported when it comes back (stranded work).

The whole handover holds the topology lock, so this process's automatic failover does
not step in; ``drain_timeout_ms`` stays below ``timeout_ms`` for the other processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ...connection import TRANSIENT_ERRORS
from ...connerrors import refused
from ...errors import ConnectionUnavailableError, FencedError
from ...leader import NET_ERRORS
from ...outbox import Outbox
from .copying import apply
from .errors import FailoverError
from .monitor import Failover, Monitor
from .record import RegionCopy
from .replication import group_of
from .topology import Topology

__all__ = ["Handover", "Unreachable", "answered", "through_fences"]

T = TypeVar("T")
#: What an add to an unreachable region raises (unless ``refused``: the Redis ACL's).
_NET: tuple[type[BaseException], ...] = (*NET_ERRORS, ConnectionUnavailableError)
#: Attempts of one add: a fenced one is tried again where a primary serves (a planned
#: handover waited out), and once more if that primary was deposed meanwhile.
_ADD_ATTEMPTS = 3


class Unreachable(Exception):
    """``through_fences``: the add met a network error; ``tried`` is the primary it
    was sent to, ``error`` what was raised."""

    def __init__(self, tried: str | None, error: BaseException) -> None:
        super().__init__(str(error))
        self.tried, self.error = tried, error


async def through_fences(
    monitor: Monitor | None,
    topo: Topology,
    call: Callable[[], Awaitable[T]],
    *,
    retry: bool,
) -> tuple[T, str | None]:
    """Run ``call`` (an add to the primary); with ``retry``, an add a fence refused
    (nothing written) is made again once a primary serves: checked at once, and, when
    the primary stepped down for a planned handover (fence.lua's reason), every check
    interval for ``failover.handover_wait_ms``. Returns the result and the primary it
    was sent to; a network error is raised as ``Unreachable`` (a refusal for lack of
    permission as it is), and so is, with ``retry`` (the call goes to the primary), a
    call given up once the primary answered neither it nor a health check for
    ``failover.timeout_ms`` (``answered``): it may or may not have been written, so it
    is not made again."""
    deadline: float | None = None
    cfg = topo.cfg
    for attempt in range(1, _ADD_ATTEMPTS + 1):
        tried = topo.view.primary
        watched = topo.by_name.get(tried or "") if retry else None
        try:
            return await answered(call(), watched, cfg.failover.timeout_ms), tried
        except FencedError as exc:
            if not retry or attempt == _ADD_ATTEMPTS or monitor is None:
                raise
            wait_ms = cfg.failover.handover_wait_ms or 0
            if deadline is None and wait_ms > 0 and "stepped down" in str(exc):
                deadline = time.monotonic() + wait_ms / 1000
            while True:
                # A round begun after the refusal (shared with the adds refused
                # meanwhile) renews a lapsed lease when a majority grants it, and
                # follows a failover; then only the primary is read again (the others,
                # a hung one among them, were just checked).
                await monitor.tick()
                serving = await _serving(topo)
                left = 0.0 if deadline is None else deadline - time.monotonic()
                if serving or left <= 0:
                    break
                await asyncio.sleep(min(left, cfg.check_interval_ms / 1000))
            if not serving:
                raise
        except _NET as exc:
            if refused(exc):  # the region answered: no failover can help
                raise
            raise Unreachable(tried, exc) from exc
    raise AssertionError("unreachable: the last attempt returns or raises")


async def answered(call: Awaitable[T], region: RegionCopy | None, timeout_ms: int) -> T:
    """Await ``call``, made to ``region``; give it up (cancelled) once ``region`` has
    answered neither it nor a health check for ``timeout_ms`` (a region that hangs: its
    server stopped, its host frozen), raising ``Unreachable``. A region that answers its
    health checks is waited for (a large batch, a slow link). None: no bound."""
    if region is None:
        return await call
    task = asyncio.ensure_future(call)
    started, limit = time.monotonic(), timeout_ms / 1000
    try:
        while True:
            # Until ``timeout_ms`` after the region's last answer (one timer per call
            # that ends in time).
            heard = max(started, region.last_ok or 0.0)
            left = heard + limit - time.monotonic()
            if left <= 0:
                break
            done, _ = await asyncio.wait({task}, timeout=left)
            if done:
                return task.result()
    except BaseException:
        _abandon(task)
        raise
    _abandon(task)
    silent = TimeoutError(
        f"region {region.name} answered neither the call nor a health check for "
        f"{timeout_ms} ms (failover.timeout_ms); the call was given up"
    )
    raise Unreachable(region.name, silent)


def _abandon(task: asyncio.Future[T]) -> None:
    """Cancel ``task`` without waiting for it (a call to a hung region ends when the
    region answers or its connection drops); its outcome is retrieved, not reported."""
    task.cancel()
    task.add_done_callback(lambda t: t.cancelled() or t.exception())


async def _serving(topo: Topology) -> bool:
    """Whether the primary of the current view serves now: its own record, read afresh
    (a round reads it before it renews the lease)."""
    view, p = topo.view, topo.primary_copy()
    rec = None if p is None else await p.check()
    return rec is not None and rec.epoch == view.epoch and rec.serving


class Handover:
    """See the module docstring."""

    def __init__(self, topo: Topology, monitor: Monitor) -> None:
        self.topo = topo
        self.monitor = monitor

    async def to(self, region: str) -> Failover:
        topo, cfg = self.topo, self.topo.cfg
        target = topo.copy(region)
        if target.priority == 0:
            raise FailoverError(
                f"region {region} has priority 0: it is never promoted (a witness); give it a "
                "priority of 1 or more to make it eligible"
            )
        async with topo.lock:
            view = await topo.refresh()
            if view.primary == region and view.serving:
                return Failover(region, region, view.epoch or 0, "manual", 0)
            if not target.reachable:
                raise FailoverError(f"region {region} is unreachable ({target.error})")
            if target.record is not None and target.record.former is not None:
                # Promoting it now would race the replicator that records its stranded
                # work and empties its copy to make it afresh (region.lua refuses too).
                raise FailoverError(
                    f"region {region} is a former primary (epoch {target.record.former}) "
                    "that has not rejoined yet: its stranded work is being recorded and its "
                    "copy made afresh from the primary; try again once it has rejoined "
                    "(get_global_stats() shows it as a secondary)"
                )
            reachable = topo.reachable()
            if len(reachable) < cfg.majority:
                raise FailoverError(
                    f"only {len(reachable)} of {len(topo.copies)} regions are reachable: a "
                    f"majority ({cfg.majority}) must vote for {region}; reachable: "
                    f"{', '.join(c.name for c in reachable)}"
                )
            p = topo.primary_copy()
            rec = None if p is None else p.record
            planned = (
                p is not None
                and p.reachable
                and rec is not None
                and rec.is_primary
                and rec.epoch == view.epoch
            )
            if planned and p is not None and view.epoch is not None:
                return await self._planned(p, target, view.epoch)
            return await self._unplanned(target)

    async def _planned(self, p: RegionCopy, target: RegionCopy, epoch: int) -> Failover:
        down = await p.op("stepdown", epoch)
        if not down.ok:
            raise FailoverError(
                f"region {p.name} could not step down from epoch {epoch} ({down.status}): the "
                "regions changed meanwhile; look at get_global_stats() and try again"
            )
        promoted = False
        try:
            await self._drain(p, target, epoch)
            # The old primary holds everything the target has: it follows the new
            # primary's stream from here without being copied afresh.
            await apply(p.lane, [], pos=f"{down.now}-0", src=f"{target.name}@{epoch + 1}")
            await self.topo.elections.release(epoch, p.name)
            # A region whose Redis restarted or failed over within the last lease holds
            # its vote until a lease has passed since its server was first seen
            # (region.lua): wait that out, as an unplanned failover does.
            deadline = time.monotonic() + 2 * self.topo.cfg.lease_ms / 1000
            while True:
                result, info = await self.monitor.promote_locked(target, "manual")
                wait = result.held_ms / 1000
                if result.won or not result.held_ms or time.monotonic() + wait >= deadline:
                    break
                await asyncio.sleep(wait + 0.02)
                await self.topo.refresh()
            if not result.won or info is None:
                raise FailoverError(f"{result.describe()}; {p.name} stays the primary")
            promoted = True
            return info
        finally:
            if not promoted:
                # On failure the lease simply lapses, and another failover follows.
                with contextlib.suppress(Exception):
                    await p.op("resume", epoch)

    async def _drain(self, p: RegionCopy, target: RegionCopy, epoch: int) -> None:
        cfg = self.topo.cfg
        drain_ms = int(cfg.failover.drain_timeout_ms or 0)
        deadline = time.monotonic() + drain_ms / 1000
        client = await p.lane.client()
        while time.monotonic() < deadline:
            try:
                if await client.zcard(p.lane.keys.active) == 0:
                    break
            except TRANSIENT_ERRORS:
                # A pooled connection the region's Redis dropped (it restarted since):
                # ask again on a fresh one until the drain's deadline.
                pass
            await asyncio.sleep(0.02)
        if not cfg.replication.enabled:
            return
        rep = self.monitor.replicator
        # Entries a replicator read and has not acknowledged are taken over once they
        # have been idle a quarter of the drain: a replicator that died, lost its term or
        # waits out a backoff holds them, and the replicators' own take-over time
        # (max(1 s, lease_ms)) is not below the drain. Applying an entry twice is
        # harmless (rg_apply.lua: each is idempotent, and a job's copy is exported as it
        # is now); the primary has stepped down, so no new work races the drain.
        consumer = Outbox(p.lane).consumer(
            group_of(target.name),
            f"handover-{os.getpid()}",
            start="0",
            count=500,
            block_ms=0,
            claim_idle_ms=max(20, min(max(1000, cfg.lease_ms), drain_ms // 4)),
            max_deliveries=1_000_000_000,
        )
        source = f"{p.name}@{epoch}"
        while True:
            got = await consumer.read(block_ms=0)
            if got:
                await rep.apply_batch(p, target, got, source)
                await consumer.ack([e.id for e in got])
                continue
            lag = await rep.lag(p, target)
            if lag is None or (lag.entries == 0 and lag.pending == 0):
                return
            if time.monotonic() >= deadline:
                raise FailoverError(
                    f"{target.name} is still {lag.entries} entries behind {p.name} after "
                    f"drain_timeout_ms ({drain_ms} ms); {p.name} stays "
                    "the primary: try again, or raise drain_timeout_ms"
                )
            await asyncio.sleep(0.02)

    async def _unplanned(self, target: RegionCopy) -> Failover:
        cfg = self.topo.cfg
        deadline = time.monotonic() + (cfg.lease_ms * 2 + cfg.failover.timeout_ms) / 1000
        while True:
            result, info = await self.monitor.promote_locked(target, "manual")
            if result.won and info is not None:
                return info
            wait = result.held_ms / 1000
            if result.held_ms and time.monotonic() + wait < deadline:
                await asyncio.sleep(wait + 0.02)
                await self.topo.refresh()
                continue
            raise FailoverError(
                f"{result.describe()}. A region does not vote while its grant to the "
                "current primary runs, and votes once per election"
            )
