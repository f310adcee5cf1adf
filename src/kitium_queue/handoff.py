"""Jobs this worker has no processor for while another live worker of the queue has one:
``Handoff``.

A rolling deploy that adds a job type runs old workers, without its processor, beside
new ones with it. Failing such a job on an old worker would spend its attempts there (an
old worker fails fast, so it would dead-letter most of them). So when the runner finds
no processor for a job's name it asks ``Handoff.peer``: if a live worker other than this
one lists a processor for that name in its presence record (``presence.py``), the job is
deferred without spending an attempt (``RetryLater``, as the encryption feature defers a
job sealed under a key this process lacks), for that worker to take. When no live worker
has one, the job fails like any other error: retried while attempts remain, then
dead-lettered.

Claims do not look at job names, so this worker keeps taking such jobs, and its runs of
them end at once: deferred straight away, they went back to it far more often than to
the busy worker that can run them (with one worker of each kind, that worker got about
its concurrency of them per deferral). Two things bound it (``hold``): the job is first
held for ``HOLD_S`` in the slot it took, so this worker takes at most its concurrency of
them per ``HOLD_S`` and the capable worker runs the others at its full rate; and the
deferrals are spread (``AWAY_MS``, +-50 %), so jobs that were held together do not all
come due at one moment, when this worker, with the most free slots, would take most of
them again. A job may still go round a few times before the capable worker takes it.

The presence records are read at most every ``PEERS_REFRESH_S`` seconds (one read shared
by the runs waiting for it), and each name's handing back is logged at most once every
``NOTE_EVERY_S`` seconds per worker.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable
from typing import Any

from .errors import RetryLater
from .limits import get_logger, printable
from .presence import WorkerPresence, live_workers

__all__ = ["AWAY_MS", "HOLD_S", "NOTE_EVERY_S", "PEERS_REFRESH_S", "Handoff"]

log = get_logger("kitium_queue.worker")

#: How long a job is held in this worker's slot before it is deferred (seconds).
HOLD_S = 0.5
#: How long a deferred job waits before a worker may claim it, on average (ms).
AWAY_MS = 500
#: The live workers' records are read again after this many seconds, not sooner.
PEERS_REFRESH_S = 3.0
#: At most one log line per job name and worker in this many seconds.
NOTE_EVERY_S = 60.0
#: Names whose last log line is remembered (beyond it, the oldest are forgotten).
_MAX_NOTED = 1_000


class Handoff:
    """Hands jobs this worker cannot run to the live workers that can (module docstring).

    Args:
        queue: the queue consumed (its ``keys`` and ``client()`` read the presence).
        worker_id: this worker's id (its own record never counts as a peer).
        clock: monotonic seconds (tests).
    """

    def __init__(
        self, queue: Any, worker_id: str, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.queue = queue
        self.worker_id = worker_id
        self._clock = clock
        self._workers: tuple[WorkerPresence, ...] = ()
        self._read_at: float | None = None
        self._lock = asyncio.Lock()
        self._noted: dict[str, float] = {}

    async def peer(self, name: str) -> str | None:
        """The id of a live worker of the queue, other than this one, that has a
        processor for jobs named ``name``; ``None`` when there is none (or when the
        records could never be read)."""
        for w in await self._live():
            if w.id != self.worker_id and w.can_process(name):
                return w.id
        return None

    async def missing(self, job_id: str, name: str, registered: Iterable[str]) -> RetryLater:
        """Job ``job_id``'s name has no processor among those ``registered`` here: the
        ``RetryLater`` that defers it for a live worker that has one (after ``hold``);
        raises ``LookupError`` naming the missing processor when none has."""
        peer = await self.peer(name)
        if peer is None:
            known = sorted(registered) or ["none"]
            raise LookupError(
                f"no processor registered for job name {name!r} on queue "
                f"{self.queue.name!r} (registered: {', '.join(known)}); register one with "
                f"queue.process({name!r}, fn)"
            )
        return await self.hold(job_id, name, peer)

    async def hold(self, job_id: str, name: str, peer: str) -> RetryLater:
        """What the runner does with job ``job_id`` (named ``name``) that live worker
        ``peer`` can run: hold it for ``HOLD_S`` (module docstring), then return the
        ``RetryLater`` that defers it without spending an attempt. Logs it at most once
        per name every ``NOTE_EVERY_S``."""
        now = self._clock()
        last = self._noted.get(name)
        if last is None or now - last >= NOTE_EVERY_S:
            if len(self._noted) >= _MAX_NOTED:
                self._noted = {n: t for n, t in self._noted.items() if now - t < NOTE_EVERY_S}
                while len(self._noted) >= _MAX_NOTED:
                    del self._noted[next(iter(self._noted))]
            self._noted[name] = now
            log.warning(
                "queue %s: worker %s has no processor for %r, but live worker %s has one: "
                "such jobs are deferred for it without spending an attempt (job %s, and "
                "others of that name for %d s without another line)",
                printable(self.queue.name),
                printable(self.worker_id),
                printable(name),
                printable(peer),
                printable(job_id),
                NOTE_EVERY_S,
            )
        await asyncio.sleep(HOLD_S)
        return RetryLater(
            AWAY_MS * random.uniform(0.5, 1.5),
            f"no processor for {name!r} on worker {self.worker_id}; deferred without "
            f"spending an attempt for live worker {peer}, which has one",
        )

    async def _live(self) -> tuple[WorkerPresence, ...]:
        if not self._stale():
            return self._workers
        async with self._lock:
            if self._stale():  # else another run read them while this one waited
                try:
                    self._workers = tuple(await live_workers(self.queue))
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # Keep what was read last (never read: no peer, so the job fails as
                    # any error would); the worker's own loops report an outage.
                    log.debug(
                        "queue %s: live workers could not be read: %s",
                        printable(self.queue.name),
                        printable(exc),
                    )
                self._read_at = self._clock()
        return self._workers

    def _stale(self) -> bool:
        return self._read_at is None or self._clock() - self._read_at >= PEERS_REFRESH_S
