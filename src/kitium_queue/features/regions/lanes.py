"""The workers of this process over the regions' queues, and the reports of changes
(feature events, metrics, webhooks).

Which queues a process serves (``workers``):

* ``"primary"`` (default): the global queue at the primary, wherever it is: on a
  failover the worker on the old primary's copy is stopped (in the background: that
  region may be gone) and one starts on the new primary's; and the own queue of every
  region (pinned jobs), each through its own region's Redis.
* ``"own"``: the own queue of ``own_region``, and the global queue only while
  ``own_region`` is the primary.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from typing import Any

from ...events import declare_events
from ...hooks import FeatureEvent
from ...limits import get_logger
from ...queue import JobQueue
from .election import View
from .monitor import Failover
from .topology import Topology

__all__ = ["FEATURE", "Lanes"]

log = get_logger(__name__)

FEATURE = "regions"
declare_events(FEATURE, "region-failover", "region-stranded")  # queue.on, webhooks
_STOP_WAIT_S = 40.0


class Lanes:
    """See the module docstring."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.serving = False
        self.concurrency: int | None = None
        self._running: dict[int, JobQueue] = {}
        self._stopping: dict[int, asyncio.Task[None]] = {}

    def wanted(self) -> list[JobQueue]:
        """The queues this process's workers should serve now."""
        cfg, view = self.topo.cfg, self.topo.view
        if cfg.workers == "own":
            own = self.topo.copy(cfg.own_region or "")
            out = [own.home]
            if view.primary == own.name:
                out.insert(0, own.lane)
            return out
        primary = self.topo.primary_copy()
        out = [] if primary is None else [primary.lane]
        return out + [c.home for c in self.topo.copies]

    def running(self) -> bool:
        return any(q.worker is not None and q.worker.running for q in self._running.values())

    async def start(self, concurrency: int | None) -> None:
        self.serving = True
        self.concurrency = concurrency
        await self.sync()

    async def sync(self) -> None:
        """Start and stop workers to match ``wanted()``."""
        if not self.serving:
            return
        want = {id(q): q for q in self.wanted()}
        for key, q in list(self._running.items()):
            if key not in want:
                del self._running[key]
                self._stop_later(q, gone=not self._reachable(q))
        for key, q in want.items():
            if key in self._running:
                continue
            pending = self._stopping.get(key)
            if pending is not None:
                await asyncio.wait({pending}, timeout=_STOP_WAIT_S)
            await q.start(concurrency=self.concurrency)
            self._running[key] = q

    def _stop_later(self, q: JobQueue, *, gone: bool = False) -> None:
        worker = q.worker
        if worker is None or not worker.running:
            return
        # A region given up (unreachable) cannot take outcomes: its jobs run again at the
        # new primary, so there is nothing to wait for.
        grace, flush = (0, 1000) if gone else (None, 30_000)

        async def stop() -> None:
            try:
                await worker.stop(grace, flush_timeout_ms=flush)
            except Exception:
                log.exception("queue %s: stopping a worker failed", q.name)

        key = id(q)
        task = asyncio.get_running_loop().create_task(stop(), name=f"kq-regions-stop-{q.name}")
        self._stopping[key] = task

        def forget(_t: asyncio.Task[None]) -> None:
            if self._stopping.get(key) is task:
                del self._stopping[key]

        task.add_done_callback(forget)

    def _reachable(self, q: JobQueue) -> bool:
        for c in self.topo.copies:
            if q in c.queues():
                return c.reachable is not False
        return True

    async def stop(self) -> None:
        self.serving = False
        running, self._running = list(self._running.values()), {}
        for q in running:
            self._stop_later(q, gone=not self._reachable(q))
        tasks = list(self._stopping.values())
        if tasks:
            await asyncio.wait(tasks, timeout=_STOP_WAIT_S)

    # ------------------------------------------------------------------ reports
    def _reporter(self) -> JobQueue:
        primary = self.topo.primary_copy()
        return (primary or self.topo.copies[0]).lane

    def emit(self, name: str, subject: str, fields: dict[str, str], event_id: str = "") -> None:
        """A ``FeatureEvent`` (``queue.on(name, ...)`` handlers and subscribers)."""
        q = self._reporter()
        if q.hooks.feature_event:
            q.hooks.emit_feature_event(
                FeatureEvent(
                    queue=self.topo.cfg.name,
                    feature=FEATURE,
                    name=name,
                    subject=subject,
                    fields=fields,
                    event_id=event_id,
                    at_ms=int(time.time() * 1000),
                )
            )

    async def report_failover(
        self, was: str, view: View, info: Failover | None, notify: Sequence[Any]
    ) -> None:
        """The ``region-failover`` event, the ``regions.failovers`` metric and, for a
        failover this process carried out, the webhooks of ``notify``."""
        fields = {
            "from": was,
            "to": str(view.primary),
            "epoch": str(view.epoch),
            "reason": info.reason if info is not None else "observed",
            "duration_ms": str(info.duration_ms) if info is not None else "",
        }
        event_id = f"{self.topo.cfg.name}:failover:{view.epoch}"
        self.emit("region-failover", str(view.primary), fields, event_id)
        metrics = self._reporter().metrics
        if metrics is not None and info is not None:
            try:
                metrics.increment(
                    "regions.failovers",
                    1,
                    {"queue": self.topo.cfg.name, "to": str(view.primary), "reason": info.reason},
                )
            except Exception:
                log.exception("metrics adapter failed on regions.failovers")
        if info is None or not notify:
            return
        from ..webhooks.models import WebhookEvent

        event = WebhookEvent(
            type="region-failover",
            data={"queue": self.topo.cfg.name, **fields},
            id=re.sub(r"[^A-Za-z0-9_.:-]", "_", f"failover-{self.topo.cfg.name}-{view.epoch}")[
                :100
            ],
        )
        for target in notify:
            try:
                await target.send_event(event)
            except Exception:
                log.exception(
                    "queue %s: the failover webhook could not be handed to %s",
                    self.topo.cfg.name,
                    type(target).__name__,
                )
