"""A worker's stop forced while the jobs it cancelled delay their cancellation.

``force()`` (a second SIGTERM/SIGINT) ends the waits of a stop at once. The runs the
stop cancels at the end of ``shutdown_timeout`` get half of the flush bound to end,
taken out of the flush: that wait is part of the flush, so ``force()`` ends it too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import JobStatus
from test_leftovers_close import SETTINGS, _stubborn

HANG_S = 30  # a call that should return but hangs fails the test, never wedges it


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
        _stubborn(q, release, runs, [], cancelled)
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
        _stubborn(other, release, runs, [], cancelled)
        await other.start()
        info = await wait_for_status(other, jid, JobStatus.COMPLETED, timeout=HANG_S)
        assert info.result == "second run", runs
    finally:
        release.set()
        await factory.aclose()


async def test_a_stop_given_no_flush_time_blames_no_outage_and_leaves_no_presence(
    redis_url: str, prefix: str, caplog: Any
) -> None:
    """``stop(flush_timeout_ms=0)`` on a healthy Redis: the caller chose not to wait for
    the last round, so the log says that, as a warning (before: an ERROR saying "no
    reply from Redis"), and the worker's presence record is deleted (before: it was
    left to expire, as after an outage)."""
    factory = QueueFactory(redis_url, prefix)
    try:
        q = factory("noflush", worker={"shutdown_timeout": 500}, settings=SETTINGS)
        first_runs: list[str] = []

        @q.process("held")
        async def held(job: Any) -> None:
            if len(first_runs) < 3:  # the first runs outlast the stop's grace
                first_runs.append(job.id)
                await asyncio.sleep(60)

        await q.add_jobs([("held", {}) for _ in range(3)])
        await q.start()
        worker = q.worker
        assert worker is not None
        await wait_until(lambda: len(worker.leases.runs) == 3)
        client = await q.client()
        assert await client.exists(q.keys.worker(worker.id)) == 1
        with caplog.at_level(logging.WARNING, logger="kitium_queue"):
            # The runs are cancelled at the end of shutdown_timeout; their hand-backs are
            # what the last round carries.
            await worker.stop(flush_timeout_ms=0)
        messages = [(r.levelno, r.getMessage()) for r in caplog.records]
        assert not [m for lvl, m in messages if lvl >= logging.ERROR], messages
        assert not [m for _, m in messages if "no reply from Redis" in m], messages
        assert await client.exists(q.keys.worker(worker.id)) == 0
        # Whatever the stop did not wait for is recovered, not lost: another worker
        # completes every job (at once, or after a lease expired).
        q2 = factory("noflush", settings=SETTINGS)
        q2.process("held")(held)
        await q2.start()
        for jid in first_runs:
            await wait_for_status(q2, jid, JobStatus.COMPLETED, timeout=10)
    finally:
        await factory.aclose()
