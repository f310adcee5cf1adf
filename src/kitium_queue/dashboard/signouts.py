"""Sign-outs shared by every process serving the same queues: a sign-out is recorded
in Redis under the queue first by name, in a key that expires with the session, so a
kept copy of the cookie is refused by every process, not only by the one that served
the sign-out.

Best effort by design: when that queue's Redis does not answer within
``SIGN_OUT_WAIT_S`` (down, refusing the connection, or refusing the queue), a session
is not taken as signed out — the pages then show that queue's outage instead of every
page failing — a sign-out is recorded in this process only (``Auth.end``), and a
warning says so, at most once a minute.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ..limits import clip, get_logger
from .auth import Auth

__all__ = ["SIGN_OUT_WAIT_S", "SignOuts"]

#: Longest wait for the Redis of the queue that records sign-outs.
SIGN_OUT_WAIT_S = 0.5

log = get_logger("kitium_queue.dashboard")


class SignOuts:
    """The sign-out records of one dashboard's queues."""

    def __init__(self, queues: Mapping[str, Any], auth: Auth) -> None:
        self.queues = queues
        self.auth = auth
        self._warned = -1e9

    def _where(self, nonce: str) -> tuple[Any, str] | None:
        """The queue first by name and the key of ``nonce``'s record, or None without
        queues."""
        if not self.queues:
            return None
        queue = self.queues[min(self.queues)]
        return queue, queue.keys.extra(f"dash:out:{nonce}")

    async def _call(self, queue: Any, act: Callable[[Any], Awaitable[Any]]) -> Any:
        """``act(client)`` within ``SIGN_OUT_WAIT_S``; None (after a warning) when the
        queue's Redis does not answer."""

        async def run() -> Any:
            return await act(await queue.client())

        try:
            return await asyncio.wait_for(run(), SIGN_OUT_WAIT_S)
        except (Exception, asyncio.TimeoutError) as exc:
            now = time.monotonic()
            if now - self._warned > 60:
                self._warned = now
                log.warning(
                    "dashboard: sign-outs shared with other processes cannot be read or "
                    "recorded in queue %s (%s); they are again once it answers (at most "
                    "one warning a minute)",
                    queue.name,
                    clip(type(exc).__name__ + (f": {exc}" if str(exc) else ""), 200),
                )
            return None

    async def ended(self, nonce: str) -> bool:
        """Whether some process recorded the sign-out of session ``nonce``."""
        where = self._where(nonce)
        if where is None:
            return False
        queue, key = where
        return bool(await self._call(queue, lambda client: client.exists(key)))

    async def sign_out(self, cookie: str | None) -> None:
        """End the session of ``cookie`` here and, through a key that expires with the
        session, in every other process serving the same queues."""
        ended = self.auth.end(cookie)
        where = None if ended is None else self._where(ended[0])
        if ended is None or where is None:
            return
        ttl = ended[1] - int(time.time())
        if ttl > 0:
            queue, key = where
            await self._call(queue, lambda client: client.set(key, b"1", ex=ttl))
