"""Concurrent ``add_job`` calls sharing round trips (``Producer.add_job``).

A ``Lane`` sends the first call at once; while its script call is in flight, the calls
made meanwhile queue up and go together in the next one (at most ``ENQUEUE_CHUNK_JOBS``
per script call), until none is left. Each caller gets its own job's id or error.

A producer keeps two lanes. Calls after which the queue's write barrier (``barrier.py``)
runs no command (every call of a queue without one) share ``plain``; those it follows
with a command (``ReplicaAcks``' ``WAIT``) share ``waiting``. Each lane's round trip
takes a connection of its own from the pool, so a call that waits for nothing is never
held by another call's ``WAIT`` (up to its timeout, while a replica lags); the ``WAIT``
still follows, on its connection, the very script call that wrote the jobs it confirms
(``WAIT`` counts the writes of its own connection), and the waiting calls made meanwhile
still share the next one.

A caller cancelled while its call waits in a lane is taken out of it: its job is never
sent (one whose round trip is under way may or may not be written, as for any call).
``JobQueue.close()`` waits for the calls in the lanes (``settled``, within
``CLOSE_GRACE_S``) before it releases the connections: a batch sent after that connected
again, and the queue was left with a client nobody closed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .errors import JobRefusedError, PartialEnqueueError, WriteNotConfirmedError
from .limits import ENQUEUE_CHUNK_JOBS

if TYPE_CHECKING:
    from .context import QueueContext
    from .producer import PreparedJob, Producer

__all__ = ["Lane"]


class Lane:
    """One line of ``add_job`` calls whose round trips are shared (module docstring).

    Args:
        producer: whose ``enqueue`` sends a batch (looked up at each batch).
        ctx: the queue's context (its event loop).
    """

    __slots__ = ("_bg", "_ctx", "_idle", "_loop", "_pending", "_producer")

    def __init__(self, producer: Producer, ctx: QueueContext) -> None:
        self._producer = producer
        self._ctx = ctx
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop of the batch in flight
        self._pending: list[tuple[PreparedJob, asyncio.Future[str], Mapping[str, Any]]] = []
        self._bg: set[asyncio.Future[None]] = set()
        self._idle: asyncio.Future[None] | None = None  # close()'s wait (``settled``)

    async def add(
        self, loop: asyncio.AbstractEventLoop, prepared: PreparedJob, opts: Mapping[str, Any]
    ) -> str:
        """Write one prepared job, alone or in the next batch of this lane; its id."""
        if self._loop is not None and self._loop is not loop:
            self._ctx.in_its_loop(self._loop)  # another loop's batch: refused, unless
            self._loop, self._pending, self._idle = None, [], None  # its loop is gone
        if self._loop is not None:
            # Another add_job of this lane is in flight: ride along in its next batch.
            fut: asyncio.Future[str] = loop.create_future()
            self._pending.append((prepared, fut, opts))
            return await fut
        self._loop = loop
        try:
            ids = await self._producer.enqueue([prepared], [opts])
        except JobRefusedError as exc:
            raise exc.errors.get(0) or JobRefusedError(exc.refused.get(0, str(exc))) from None
        except WriteNotConfirmedError as exc:
            raise exc.unconfirmed.get(0, exc) from None
        finally:
            if self._pending:
                task = asyncio.ensure_future(self._flush())
                self._bg.add(task)
                task.add_done_callback(self._bg.discard)
            else:
                self._done()
        return ids[0]

    async def settled(self, timeout_s: float) -> None:
        """Wait until no call of this loop is in the lane (``timeout_s`` at most)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            return
        if self._idle is None:
            self._idle = loop.create_future()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._idle), timeout_s)

    def _done(self) -> None:
        """No call is in the lane any more."""
        self._loop = None
        idle, self._idle = self._idle, None
        if idle is not None and not idle.done():
            idle.set_result(None)

    async def _flush(self) -> None:
        try:
            while self._pending:
                # Callers cancelled while they waited: their jobs are not sent.
                batch = [b for b in self._pending[:ENQUEUE_CHUNK_JOBS] if not b[1].done()]
                del self._pending[:ENQUEUE_CHUNK_JOBS]
                if not batch:
                    continue
                try:
                    ids = await self._producer.enqueue(
                        [p for p, _, _ in batch], [o for _, _, o in batch]
                    )
                except BaseException as exc:
                    _settle(batch, exc)
                    if not isinstance(exc, Exception):  # cancelled, KeyboardInterrupt, exit
                        raise
                    continue
                for (_, fut, _), job_id in zip(batch, ids, strict=True):
                    if not fut.done():
                        fut.set_result(job_id)
        except BaseException:
            # Interrupted (cancelled, KeyboardInterrupt): the calls not sent yet are told
            # so rather than left waiting for ever; nothing of their jobs was written.
            left, self._pending = self._pending, []
            for _, fut, _ in left:
                if not fut.done():
                    fut.set_exception(
                        RuntimeError(
                            "add_job interrupted: the batch that was to carry it was "
                            "stopped before it was sent; nothing of the job was written"
                        )
                    )
            raise
        finally:
            self._done()


def _settle(
    batch: list[tuple[PreparedJob, asyncio.Future[str], Mapping[str, Any]]], exc: BaseException
) -> None:
    """The callers of a batch that failed: those whose jobs are known written get their
    ids; only the others get the error (the underlying one, not the batch's bookkeeping)."""
    written: list[str | None] = []
    refused: dict[int, JobRefusedError] = {}
    unconfirmed: dict[int, WriteNotConfirmedError] = {}
    err: BaseException = exc
    if isinstance(exc, PartialEnqueueError):
        written = list(exc.written_ids)
        refused = exc.errors
        err = exc.__cause__ or exc
    elif isinstance(exc, JobRefusedError):
        written, refused = exc.ids, exc.errors
    elif isinstance(exc, WriteNotConfirmedError):
        written, unconfirmed = list(exc.written_ids), exc.unconfirmed
    for i, (_, fut, _) in enumerate(batch):
        if fut.done():
            continue
        if i in refused:
            fut.set_exception(refused[i])
        elif i in unconfirmed:
            fut.set_exception(unconfirmed[i])
        elif i < len(written) and written[i]:
            fut.set_result(str(written[i]))
        else:
            fut.set_exception(err)
