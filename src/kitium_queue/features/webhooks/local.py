"""Reliable and best-effort deliveries: tasks of the process that saw the event, with
retries in memory (lost if the process dies). See docs/webhooks.md, "Delivery
strategies"; guaranteed deliveries are the ``DeliveryService``'s (``service.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

import orjson

from ...leader import NET_ERRORS
from ...limits import get_logger
from .delivery import history_json
from .service import Delivery, _Base

if TYPE_CHECKING:
    from .manager import WebhookManager

__all__ = ["LocalDispatcher"]

log = get_logger(__name__)


class LocalDispatcher(_Base):
    """Reliable and best-effort deliveries: tasks of this process (see module doc).

    At most ``max_backlog`` deliveries are held at a time; beyond that new ones are
    dropped (counted in ``dropped``, logged once a minute) rather than ever slowing the
    worker down.
    """

    def __init__(self, mgr: WebhookManager, max_backlog: int = 10_000) -> None:
        super().__init__(mgr)
        self.max_backlog = max_backlog
        self.dropped = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._warned = 0.0

    def submit(self, d: Delivery) -> None:
        if len(self._tasks) >= self.max_backlog:
            self.dropped += 1
            now = time.monotonic()
            if now - self._warned > 60:
                self._warned = now
                log.warning(
                    "webhook deliveries of queue %s: %d in flight in this process, "
                    "new ones dropped (%d so far)",
                    self.mgr.queue.name,
                    len(self._tasks),
                    self.dropped,
                )
            return
        task = asyncio.get_running_loop().create_task(self._run(d))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, d: Delivery) -> None:
        mgr = self.mgr
        budget = d.max_retries if d.strategy == "reliable" else 0
        while True:
            async with mgr.slots.hold(d.target), mgr.limit.hold(d.target):  # endpoint's first
                res = await self.attempt(d)
            if res.ok or res.permanent or d.attempts >= budget:
                break
            d.attempts += 1
            d.history = orjson.loads(
                history_json(
                    d.history,
                    [int(time.time() * 1000), d.attempts, res.status, res.error, res.duration_ms],
                )
            )
            await asyncio.sleep(max(mgr.backoff.delay_ms(d.attempts), res.wait_ms) / 1000)
        # The history of an in-memory delivery is best effort too.
        with contextlib.suppress(*NET_ERRORS):
            await self.write(self.record(d, res, durable=False))

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for deliveries in flight, then cancel the rest."""
        if not self._tasks:
            return
        _done, pending = await asyncio.wait(list(self._tasks), timeout=timeout)
        for t in pending:
            t.cancel()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)
