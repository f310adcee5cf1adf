"""A worker's stop forced while the jobs it cancelled delay their cancellation.

``force()`` (a second SIGTERM/SIGINT) ends the waits of a stop at once. The runs the
stop cancels at the end of ``shutdown_timeout`` get half of the flush bound to end,
taken out of the flush: that wait is part of the flush, so ``force()`` ends it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import JobQueue, JobStatus

HANG_S = 30  # a call that should return but hangs fails the test, never wedges it
SETTINGS = {"lock_duration": 1000, "max_stalled_interval": 250}


def _stubborn(q: JobQueue, cancelled: list[str], runs: list[str], release: asyncio.Event) -> None:
    """Processor ``stubborn``: its first run runs until cancelled, then delays its
    cancellation for up to 30 s (or until ``release``); later runs return at once."""

    @q.process("stubborn")
    async def stubborn(job: Any) -> str:
        runs.append(job.id)
        if len(runs) > 1:
            return "second run"
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(job.id)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(release.wait(), 30)
            raise
        return "never"


async def test_force_ends_the_wait_for_cancelled_runs(redis_url: str, prefix: str) -> None:
    """``shutdown_timeout`` 0.5 s, ``flush_timeout_ms`` 20 s, a job that delays its
    cancellation, and ``force()`` once it was cancelled: the stop ends at once (a
    generous bound of 3 s; before, it waited half of the flush bound, 10 s, whatever
    ``force()`` said). The job is not lost: its lease expires and another worker
    completes it."""
    factory = QueueFactory(redis_url, prefix)
    release = asyncio.Event()
    cancelled: list[str] = []
    runs: list[str] = []
    try:
        q = factory("forced", worker={"shutdown_timeout": 500}, settings=SETTINGS)
        _stubborn(q, cancelled, runs, release)
        jid = await q.add_job("stubborn", {})
        await q.start()
        await wait_until(lambda: runs)
        worker = q.worker
        assert worker is not None
        t0 = time.monotonic()
        stopping = asyncio.ensure_future(worker.stop(flush_timeout_ms=20_000))
        await wait_until(lambda: cancelled, timeout=HANG_S)
        worker.force()
        await asyncio.wait_for(stopping, HANG_S)
        took = time.monotonic() - t0
        assert took < 3, f"stop() took {took:.1f} s after force()"
        other = factory("forced", settings=SETTINGS)
        _stubborn(other, cancelled, runs, release)
        await other.start()
        info = await wait_for_status(other, jid, JobStatus.COMPLETED, timeout=HANG_S)
        assert info.result == "second run", runs
    finally:
        release.set()
        await factory.aclose()
