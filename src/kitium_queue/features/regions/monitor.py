"""The control loop of a multi-region queue, run in every process that initialised a
``GlobalQueueManager`` (``background=True``):

1. **health**: read every region's record (``check_interval_ms``), with a deadline;
2. **view**: the established epoch and primary; a change (made here or by another
   process) moves this process's producers and workers (``on_change``);
3. **adopt**: a reachable region that knows an older epoch (a former primary back after
   a failover, a region that was down) learns the current one: it stops taking work as
   a primary at once;
4. **renew**: the primary's lease, when a third of it is left, with a majority's grants;
5. **failover** (``failover.enabled``): the primary unreachable, or not serving, for
   ``timeout_ms`` -> the reachable region with the lowest ``priority`` number (never 0)
   is elected, provided a majority of regions is reachable and no election of a newer
   epoch is under way (one is given ``timeout_ms`` to finish before a higher one starts).

``promote`` is the one way a region becomes the primary (bootstrap, automatic, by hand).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ...leader import cancel_and_wait
from ...limits import get_logger
from ...outbox import Outbox
from .election import Election, View
from .errors import FailoverError
from .record import RegionCopy
from .replication import Replicator, group_of
from .topology import Topology

__all__ = ["Failover", "Monitor"]

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Failover:
    """A promotion this process carried out.

    ``reason``: ``"bootstrap"``, ``"automatic"`` or ``"manual"``; ``duration_ms``: from
    the start of the election to the end of the catch-up; ``caught_up``: what the new
    primary fetched from its peers (statuses of ``rg_apply.lua``).
    """

    previous: str | None
    primary: str
    epoch: int
    reason: str
    duration_ms: int
    caught_up: dict[str, int] = field(default_factory=dict)


ChangeHandler = Callable[[View, View, Failover | None], Awaitable[None]]


class Monitor:
    """See the module docstring."""

    def __init__(self, topo: Topology, replicator: Replicator, on_change: ChangeHandler) -> None:
        self.topo = topo
        self.cfg = topo.cfg
        self.replicator = replicator
        self.on_change = on_change
        self._task: asyncio.Task[None] | None = None
        self._not_serving_since: float | None = None
        self._warned_minority = False
        # (epoch, first seen) of an election under way that this process did not win.
        self._election_seen: tuple[int, float] | None = None
        self._tick_lock = asyncio.Lock()
        self.ticks = 0
        # Rounds begun by ``tick`` and the view of the last one that ended (None while
        # one runs or after one failed): callers that waited share the next round.
        self._rounds = 0
        self._last: View | None = None
        # The view this process last followed (``on_change``): a change is followed once,
        # whichever refresh saw it first.
        self._followed: View | None = None
        # Promotions by this process, counted at their start and at their end (odd: one
        # is under way). A promotion tells the other regions itself, so records a round
        # read while one ran may predate that and are not taken for stale regions.
        self._promotions = 0

    # ------------------------------------------------------------------ loop
    async def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"kq-regions-monitor-{self.cfg.name}"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        # Cancelled again until it ends: a round's call that took the cancel for its
        # reply (``asyncio.wait_for`` before Python 3.12, gh-86296) left the loop running
        # and this stop waiting for it for ever.
        await cancel_and_wait(task)

    async def _run(self) -> None:
        interval = self.cfg.check_interval_ms / 1000
        while True:
            started = time.monotonic()
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("queue %s: region monitor round failed", self.cfg.name)
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    async def tick(self) -> View:
        """One round of the loop (see the module docstring), begun after this call.
        Rounds never overlap, and callers that waited meanwhile share the one that
        follows: a fenced ``add_job`` waits one round, not one per add refused before
        it (with a hung region each round lasts its deadline: a round per add piled
        up behind the lock for as long as the region hung)."""
        wanted = self._rounds + 1
        async with self._tick_lock:
            if self._rounds >= wanted and self._last is not None:
                return self._last
            self._rounds += 1
            self._last = None
            self._last = await self._tick()
            return self._last

    async def _tick(self) -> View:
        self.ticks += 1
        if self._followed is None:
            self._followed = self.topo.view
        promotions = self._promotions
        if self.topo.view.epoch is not None:
            await self._renew(self.topo.view, first=True)
        view = await self.topo.refresh()
        # While a promotion by this process is under way (it holds topo.lock) the change
        # it makes is its own to follow, with its reason and duration: following it here
        # first would report it as merely observed. A change it does not follow (an
        # election it lost) is followed by the next round.
        if not self.topo.lock.locked() and not _same(view, self._followed):
            await self._follow(view, None)
        if view.epoch is not None and view.primary is not None:
            if promotions == self._promotions and promotions % 2 == 0:
                await self._adopt_stale(view)
            await self._renew(view)
        if not self.cfg.replication.enabled:
            await self._forget_former()
        self._not_serving_since = (
            None if view.serving else (self._not_serving_since or time.monotonic())
        )
        if self.cfg.failover.enabled and not self.topo.lock.locked():
            await self._maybe_failover(view)
        return view

    async def _adopt_stale(self, view: View) -> None:
        assert view.epoch is not None and view.primary is not None
        stale = [
            c
            for c in self.topo.reachable()
            if c.record is not None and (c.record.epoch is None or c.record.epoch < view.epoch)
        ]
        if stale:
            for c in stale:
                log.warning(
                    "queue %s: region %s knew epoch %s; told it that %s is the primary of "
                    "epoch %d (it takes no work as the primary from now on)",
                    self.cfg.name,
                    c.name,
                    c.record.epoch if c.record else None,
                    view.primary,
                    view.epoch,
                )
            await self.topo.elections.adopt(view.epoch, view.primary, stale)

    async def _forget_former(self) -> None:
        """Without replication a former primary has nothing to rejoin (no stranded work is
        collected, no copy made afresh: each failover starts from what the new primary
        has), so its mark is dropped at once and it may be promoted again."""
        for c in self.topo.reachable():
            if c.record is not None and c.record.former is not None:
                c.record = await c.op("rejoin")

    async def _renew(self, view: View, *, first: bool = False) -> None:
        """Renew the primary's lease when a third of it is left; ``first`` (as a round
        begins): only if it would not outlast the round's checks, which a hung region
        holds up to the per-region deadline."""
        p = self.topo.primary_copy()
        rec = None if p is None else p.record
        if p is None or not p.reachable or rec is None or not rec.is_primary:
            return
        if rec.epoch != view.epoch or rec.down == rec.epoch or rec.lease < 0:
            return
        # The record was read as the round began; the round then waited for its slowest
        # region (a hung one: the whole per-region deadline), so less of the lease is left.
        read_ms = 0.0 if p.last_ok is None else (time.monotonic() - p.last_ok) * 1000
        margin = self.topo.elections.margin_ms
        due = p.timeout_s * 1000 + margin if first else self.cfg.lease_ms * 2 // 3
        if rec.lease_left_ms - read_ms > due:
            return
        if read_ms > margin:
            # Renewed from the primary's clock read now, before the grants are asked:
            # counted from the round's first reading, a lease renewed once per round of
            # a per-region deadline ran out for a while every other round.
            rec = await p.check()
            if rec is None or not rec.is_primary or rec.epoch != view.epoch:
                return
            if rec.down == rec.epoch or rec.lease < 0:
                return
        assert rec.epoch is not None
        ok = await self.topo.elections.renew(p, rec.epoch, rec.now)
        if not ok:
            log.debug("queue %s: lease of %s not renewed (no majority)", self.cfg.name, p.name)

    async def _maybe_failover(self, view: View) -> None:
        if view.primary is None:
            if view.epoch is None and len(self.topo.reachable()) >= self.cfg.majority:
                await self.bootstrap()
            return
        p = self.topo.primary_copy()
        timeout_s = self.cfg.failover.timeout_ms / 1000
        gone = p is None or (not p.reachable and p.down_for_s() >= timeout_s)
        idle = (
            self._not_serving_since is not None
            and time.monotonic() - self._not_serving_since >= timeout_s
        )
        if not (gone or idle):
            return
        reachable = self.topo.reachable()
        if len(reachable) < self.cfg.majority:
            if not self._warned_minority:
                self._warned_minority = True
                log.warning(
                    "queue %s: the primary %s is unavailable, but only %d of %d regions are "
                    "reachable from here (a majority, %d, must agree): no failover from this "
                    "process",
                    self.cfg.name,
                    view.primary,
                    len(reachable),
                    len(self.topo.copies),
                    self.cfg.majority,
                )
            return
        self._warned_minority = False
        if view.election > (view.epoch or 0):
            # Votes were cast in a newer epoch than the established one: another process
            # (or an earlier round of ours) is electing. Give that election the failover
            # timeout to finish before starting a higher one: a second election right
            # behind it would move the primary twice (and fence the first winner) for
            # nothing. A candidate that died mid-election is overtaken after the timeout.
            seen = self._election_seen
            if seen is None or seen[0] != view.election:
                self._election_seen = (view.election, time.monotonic())
                return
            if time.monotonic() - seen[1] < timeout_s:
                return
        candidates = self.candidates(exclude=view.primary)
        if candidates:
            await self.promote(candidates[0], "automatic")

    def candidates(self, exclude: str | None) -> list[RegionCopy]:
        """Reachable regions that may be promoted, best first (lowest priority number,
        then configuration order). A former primary that has not rejoined yet is not one
        (region.lua refuses to promote it: see ``Handover.to``)."""
        order = {c.name: i for i, c in enumerate(self.topo.copies)}
        return sorted(
            (
                c
                for c in self.topo.reachable()
                if c.name != exclude
                and c.priority > 0
                and (c.record is None or c.record.former is None)
            ),
            key=lambda c: (c.priority, order[c.name]),
        )

    # ------------------------------------------------------------------ promotion
    async def establish(self, first_contact_s: float) -> None:
        """At start: connect to every region, make each own queue its region's home, and
        agree on the primary; the first time ever, elect the configured one. Raises
        ``FailoverError`` when that needs a majority that is not reachable."""
        copies = self.topo.copies
        await asyncio.gather(*(c.connect(first_contact_s) for c in copies))
        view = await self.topo.refresh()
        reachable = self.topo.reachable()
        for c in reachable:
            await c.make_home()
        if view.epoch is not None:
            await self.tick()
            return
        if len(reachable) < self.cfg.majority:
            raise FailoverError(
                f"cannot elect the first primary of {self.cfg.name!r}: {len(reachable)} of "
                f"{len(copies)} regions are reachable and a majority ({self.cfg.majority}) "
                "must vote; unreachable: "
                + ", ".join(f"{c.name} ({c.error})" for c in copies if not c.reachable)
            )
        result = await self.bootstrap()
        if result is None or not result.won:
            raise FailoverError(
                f"cannot elect the first primary of {self.cfg.name!r}: "
                + (result.describe() if result else "no region may be promoted")
            )

    async def bootstrap(self) -> Election | None:
        """Elect the configured primary (or, if it is unreachable, the best reachable
        region) when no region knows of any primary yet."""
        want = self.topo.by_name[self.cfg.primary]
        target = want if want.reachable else next(iter(self.candidates(None)), None)
        if target is None:
            return None
        if target is not want:
            # Not what the configuration says: worth a warning (it stays so until a
            # failover_to the configured region).
            log.warning(
                "queue %s: the configured primary %s is unreachable (%s): electing %s as "
                "the first primary instead",
                self.cfg.name,
                want.name,
                want.error or "no answer",
                target.name,
            )
        return (await self.promote(target, "bootstrap"))[0]

    async def promote(self, target: RegionCopy, reason: str) -> tuple[Election, Failover | None]:
        """Elect ``target`` in the next epoch; on success, tell every reachable region,
        catch it up from its peers, and report the change (``Failover``)."""
        async with self.topo.lock:
            return await self.promote_locked(target, reason)

    async def promote_locked(
        self, target: RegionCopy, reason: str
    ) -> tuple[Election, Failover | None]:
        """``promote`` for a caller that holds ``topo.lock`` (a planned handover)."""
        self._promotions += 1
        try:
            return await self._promote(target, reason)
        finally:
            self._promotions += 1

    async def _promote(self, target: RegionCopy, reason: str) -> tuple[Election, Failover | None]:
        started = time.monotonic()
        prev = self.topo.view
        epoch = max(prev.election, prev.epoch or 0) + 1
        # The groups exist before the new primary can write its first entry.
        outbox = Outbox(target.lane)
        for other in self.topo.copies:
            if other is not target:
                await outbox.create_group(group_of(other.name), "$")
        result = await self.topo.elections.elect(target, epoch)
        if not result.won:
            log.info("queue %s: %s", self.cfg.name, result.describe())
            return result, None
        await self.topo.elections.adopt(epoch, target.name, self.topo.reachable())
        view = await self.topo.refresh()
        caught: dict[str, int] = {}
        if reason != "bootstrap" and self.topo.cfg.replication.enabled:
            caught = await self.replicator.catch_up(target)
        info = Failover(
            prev.primary,
            target.name,
            epoch,
            reason,
            int((time.monotonic() - started) * 1000),
            caught,
        )
        # A failover nobody asked for is worth a warning; a bootstrap or a handover by
        # hand is what the caller wanted.
        log.log(
            logging.WARNING if reason == "automatic" else logging.INFO,
            "queue %s: region %s is the primary of epoch %d (%s; was %s; %d ms%s)",
            self.cfg.name,
            target.name,
            epoch,
            reason,
            prev.primary,
            info.duration_ms,
            f"; caught up {caught}" if caught else "",
        )
        self._not_serving_since = None
        await self._follow(view, info, prev)
        return result, info

    async def _follow(self, view: View, info: Failover | None, prev: View | None = None) -> None:
        was = prev if prev is not None else (self._followed or view)
        self._followed = view
        await self.on_change(was, view, info)


def _same(a: View, b: View) -> bool:
    return (a.primary, a.epoch) == (b.primary, b.epoch)
