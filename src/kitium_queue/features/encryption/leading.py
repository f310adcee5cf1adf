"""Who runs the rotation pass: ``RotationService``, the leader-only service
``encryption-rotation`` that only processes holding the queue's current key campaign for.

The pass seals every value under the current key, so a leader without it can do nothing
(a rolling deploy of a new key: an old worker still holds the old keys only). Such a
process does not campaign: every ``poll_ms`` it compares the queue's current key id
(Redis) with the keys it holds, and while it lacks the current one its
``LeaderService`` is stopped (a leading body is cancelled and the lease released), so a
process that holds the key is elected. It says so once (a warning naming the key), and
records itself in ``<prefix>enc:lacking`` (field ``host:pid``: the key it lacks, the ids
it holds, when; refreshed every ``_REPORT_S`` s, the hash expiring ``_REPORT_TTL_MS``
after the last report), which ``read_status`` turns into ``RotationStatus.lacking`` and,
while no process holding the key leads, ``RotationStatus.stalled``. Once the process
holds the key (``add_key``), it takes its report back and campaigns again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from typing import TYPE_CHECKING, Any

import orjson
from redis.exceptions import ResponseError

from ...leader import LeaderService, OutageLog, cancel_and_wait
from ...limits import get_logger
from ...runends import wait_event
from .crypto import KeyNotHeldError, is_key_id
from .status import LACKING, ROLE, wrongtype

if TYPE_CHECKING:
    from ...queue import JobQueue
    from .manager import EncryptionManager

__all__ = ["RotationService"]

log = get_logger(__name__)

#: Seconds between two reports of a process that lacks the current key.
_REPORT_S = 10.0
#: The report hash expires this long after the last report (ms).
_REPORT_TTL_MS = 60_000


class RotationService:
    """The ``encryption-rotation`` service of one ``EncryptionManager`` (a ``Service``:
    ``queue.add_service``); see the module docstring.

    Attributes:
        leader: the ``LeaderService`` it starts while this process holds the current key.
        missing: the current key id this process lacks (None: it holds it, or the queue
            has no current key yet).
    """

    name = ROLE

    def __init__(self, manager: EncryptionManager, *, poll_ms: int = 1000) -> None:
        self.manager = manager
        self.poll_ms = poll_ms
        self.leader = LeaderService(ROLE, self._body)
        self.missing: str | None = None
        self.who = f"{socket.gethostname()}:{os.getpid()}"[:100]
        self._queue: JobQueue | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._reported = -_REPORT_S
        self._warned: set[str] = set()

    @property
    def is_leader(self) -> bool:
        """Whether this process runs the pass now."""
        return self.leader.is_leader

    async def start(self, queue: JobQueue) -> None:
        if self._task is not None and not self._task.done():
            return
        self._queue = queue
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(
            self._gate(queue), name=f"kq-enc-rotation-gate-{queue.name}"
        )

    async def stop(self) -> None:
        task, self._task = self._task, None
        # Cancelled again until it ends: a call of the gate that took the cancel for its
        # reply (gh-86296, before Python 3.12) left it looping, and starting the campaign
        # again, while this stop waited for it for ever.
        await cancel_and_wait(task)
        await self.leader.stop()
        if self.missing is not None and self._queue is not None:
            # Unreachable Redis: the report goes stale and is ignored.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._withdraw(self._queue), 1.0)
        self.missing = None

    # ------------------------------------------------------------------ gate
    async def _gate(self, queue: JobQueue) -> None:
        outage = OutageLog(f"queue {queue.name}: encryption rotation leadership")
        while True:
            try:
                missing = await self._lacks(queue)
                if missing is None:
                    if self.missing is not None:
                        log.warning(
                            "queue %r: this process holds the current key %r now; it takes "
                            "part in running the encryption rotation pass again",
                            queue.name,
                            self.missing,
                        )
                        self.missing = None
                        await self._withdraw(queue)
                    await self.leader.start(queue)
                else:
                    await self.leader.stop()  # the pass seals under a key it lacks
                    self._lacking(queue, missing)
                    await self._report(queue, missing)
                outage.ok()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await outage.pause(exc)
                continue
            self._wake.clear()
            await wait_event(self._wake, self.poll_ms / 1000)  # never swallows a cancel

    async def _lacks(self, queue: JobQueue) -> str | None:
        """The queue's current key id when this process does not hold it, else None (a
        queue without a current key yet, or a damaged record, is left to the pass)."""
        client = await queue.client()
        try:
            raw = await client.hget(self.manager.meta_key, "current")
        except ResponseError as exc:
            if not wrongtype(exc):
                raise
            return None
        cur: str = "" if raw is None else raw.decode("utf-8", "replace")
        if not is_key_id(cur) or cur in self.manager.ring:
            return None
        return cur

    def _lacking(self, queue: JobQueue, key_id: str) -> None:
        """Say once per key id that this process stepped back."""
        if self.missing != key_id and key_id not in self._warned and len(self._warned) < 100:
            self._warned.add(key_id)
            log.warning(
                "queue %r: this process does not hold the current key %r (it holds %s), so "
                "it does not run the encryption rotation pass: a process holding %r leads "
                "it (rotation_status() says when none does); add the key to this "
                "process's configuration (add_key) to take part again",
                queue.name,
                key_id,
                ", ".join(self.manager.ring.ids()) or "none",
                key_id,
            )
        if self.missing != key_id:
            self._reported = -_REPORT_S  # a new key: report it now
        self.missing = key_id

    async def _report(self, queue: JobQueue, key_id: str) -> None:
        now = time.monotonic()
        if now - self._reported < _REPORT_S:
            return
        client = await queue.client()
        sec, usec = await client.time()  # Redis' clock: the readers compare with it
        value = orjson.dumps(
            {"key": key_id, "held": self.manager.ring.ids(), "at": sec * 1000 + usec // 1000}
        )
        key = queue.keys.extra(LACKING)
        pipe = client.pipeline(transaction=False)
        pipe.hset(key, self.who, value)
        pipe.pexpire(key, _REPORT_TTL_MS)
        for got in await pipe.execute(raise_on_error=False):
            if isinstance(got, Exception) and not wrongtype(got):
                raise got  # another type (damaged by hand): no report, nothing else
        self._reported = now

    async def _withdraw(self, queue: JobQueue) -> None:
        client = await queue.client()
        try:
            await client.hdel(queue.keys.extra(LACKING), self.who)
        except ResponseError as exc:
            if not wrongtype(exc):
                raise

    # ------------------------------------------------------------------ body
    async def _body(self, term: int) -> Any:
        """The leader's body: the pass; if the queue's key changed to one this process
        lacks meanwhile, it steps down (the gate stops its campaign)."""
        try:
            await self.manager.rotation.serve(term)
        except KeyNotHeldError as exc:
            if self._queue is not None:
                self._lacking(self._queue, exc.key_id)
            self._wake.set()
