"""The registrations of a queue's webhooks: stored in Redis, cached in each process.

The cache is reloaded when ``wh:ver`` changed, checked at most every ``check_s``
seconds (the delivery service checks before each batch), so a registration made by any
process reaches every worker within about that time.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from ...errors import ConfigurationError
from ...limits import get_logger
from .models import Webhook

if TYPE_CHECKING:
    from ...queue import JobQueue

__all__ = ["Registry"]

log = get_logger(__name__)


class Registry:
    """Cached ``wh:hooks`` of one queue."""

    def __init__(self, queue: JobQueue, check_s: float = 1.0) -> None:
        self.queue = queue
        self.key = queue.keys.extra("wh:hooks")
        self.ver_key = queue.keys.extra("wh:ver")
        self.check_s = check_s
        self.hooks: dict[str, Webhook] = {}
        self._ver: bytes | None = None
        self._checked = 0.0
        self._by_event: dict[tuple[str, bool], tuple[Webhook, ...]] = {}
        self.damaged: list[str] = []
        self._loaded = False
        self._lock = asyncio.Lock()
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    async def refresh(self, force: bool = False) -> None:
        """Reload if ``check_s`` passed (or ``force``) and the version moved. Callers
        that run at the same time wait for one load: none returns with a cache that a
        load in progress has not filled yet."""
        if not force and not self.stale():
            return
        loop = asyncio.get_running_loop()
        if self._lock_loop is not loop:  # a lock belongs to the loop that first used it
            self._lock, self._lock_loop = asyncio.Lock(), loop
        async with self._lock:
            if not force and not self.stale():
                return  # loaded while this call waited
            await self._load(force)

    async def _load(self, force: bool) -> None:
        started = time.monotonic()
        client = await self.queue.client()
        ver = await client.get(self.ver_key)
        if ver == self._ver and not force and self._loaded:
            self._checked = started
            return
        raw = await client.hgetall(self.key)
        hooks: dict[str, Webhook] = {}
        damaged: list[str] = []
        for k, v in raw.items():
            wid = k.decode("utf-8", "replace")
            try:
                hooks[wid] = Webhook.from_json(v)
            except ConfigurationError as exc:
                damaged.append(wid)
                log.warning(
                    "webhook registration %r of queue %s is damaged and ignored: %s",
                    wid[:100],
                    self.queue.name,
                    exc,
                )
        self.hooks, self._ver, self.damaged = hooks, ver, damaged
        self._by_event = {}
        self._checked, self._loaded = started, True

    def put(self, hook: Webhook) -> None:
        """Update the cache after this process changed a registration."""
        self.hooks[hook.id] = hook
        self._by_event = {}

    def drop(self, webhook_id: str) -> None:
        self.hooks.pop(webhook_id, None)
        self._by_event = {}

    def get(self, webhook_id: str) -> Webhook | None:
        return self.hooks.get(webhook_id)

    def wanting(self, event: str, *, guaranteed: bool) -> tuple[Webhook, ...]:
        """Active endpoints subscribed to ``event``: the guaranteed ones, or the others."""
        key = (event, guaranteed)
        found = self._by_event.get(key)
        if found is None:
            found = tuple(
                h
                for h in self.hooks.values()
                if h.active and h.guaranteed == guaranteed and event in h.events
            )
            self._by_event[key] = found
        return found

    def stale(self) -> bool:
        return not self._loaded or time.monotonic() - self._checked >= self.check_s
