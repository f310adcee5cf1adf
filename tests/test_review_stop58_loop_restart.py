"""A queue whose event loop ended with its worker running (a hand-run loop closed without
``await queue.close()``, a notebook's) serves the next loop: after ``close()`` there, a
new worker runs the jobs added there at once, whatever the old worker still held (its
jobs wait for their leases), and the worker gone leaves no error in the logs
(lifecycle.Lifecycle.forget_ended, leftover.py).

Before, the old worker's wake-up wait (``BZPOPMIN`` with a claim sent behind it) was
still open in Redis: the first jobs added in the new loop were claimed for the worker
gone and stayed "active", never run, until their leases expired; the queue's services
kept tasks of the closed loop (a leader service never campaigned again, and the new
worker's stop logged "service eviction-watch failed to stop: RuntimeError: Event loop
is closed").
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from helpers import wait_for_status, wait_until
from kitium_queue import JobQueue, JobStatus, LeaderService

#: Leases far longer than the test waits: a job it sees finish did not wait for one.
LEASE_MS = 600_000
#: How long the new loop's jobs may take to finish (s): well within ``LEASE_MS``.
DONE_S = 20.0


def _in_a_loop_closed_after(step: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``step`` in an event loop of its own, then close that loop as it is (its
    tasks pending: no ``asyncio.run``, no ``close()`` of the queue)."""
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(step())
    finally:
        loop.close()


def _job_1_running_in_a_loop_closed_after(q: Any, started: threading.Event) -> str:
    """Start ``q``'s worker in a loop of its own, add job 1 ("j"), wait until its
    processor sets ``started``, then close that loop as it is; job 1's id."""
    first: list[str] = []

    async def a_loop_that_ends_without_close() -> None:
        await q.start()
        first.append(await q.add_job("j", 1))
        await wait_until(started.is_set, DONE_S)  # job 1 runs there when the loop ends

    _in_a_loop_closed_after(a_loop_that_ends_without_close)
    return first[0]


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.name.split(".")[0] in ("kitium_queue", "asyncio")
    ]


def _collect_what_earlier_tests_left(caplog: pytest.LogCaptureFixture) -> None:
    """Collect the garbage of the tests run before in this process (a task of theirs
    destroyed pending logs an asyncio ERROR) before this test looks at its own."""
    gc.collect()
    caplog.clear()


def _queue(redis_url: str, prefix: str, **worker: Any) -> JobQueue:
    return JobQueue(
        "restart",
        redis=redis_url,
        prefix=prefix,
        worker={"concurrency": 4, **worker},
        settings={"lock_duration": LEASE_MS},
    )


def _register(q: JobQueue, kind: str, started: threading.Event, hold: threading.Event) -> None:
    """A processor of ``kind`` for job name ``j``: job 1 signals ``started`` and waits
    (for ``hold``, or its loop to end), the others return their data doubled."""
    if kind == "async":

        @q.process("j")
        async def run_async(job: Any) -> int:
            if job.data == 1:
                started.set()
                await asyncio.sleep(3600)
            return int(job.data) * 2

    elif kind == "def":

        @q.process("j")
        def run_in_thread(job: Any) -> int:
            if job.data == 1:
                started.set()
                hold.wait(3600)
            return int(job.data) * 2

    else:

        @q.process_batch("j", size=2, max_wait=50)
        async def run_batch(jobs: list[Any]) -> list[int]:
            if any(job.data == 1 for job in jobs):
                started.set()
                await asyncio.sleep(3600)
            return [int(job.data) * 2 for job in jobs]


@pytest.mark.parametrize("kind", ["async", "def", "batch"])
def test_a_worker_of_the_next_loop_runs_the_jobs_added_there_at_once(
    redis_url: str, prefix: str, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    _collect_what_earlier_tests_left(caplog)
    q = _queue(redis_url, prefix, scheduler=False)
    started, hold = threading.Event(), threading.Event()
    _register(q, kind, started, hold)
    first = [_job_1_running_in_a_loop_closed_after(q, started)]

    async def the_next_loop() -> dict[str, Any]:
        await q.close()  # frees the queue for this loop, forgets the worker gone
        await q.start()
        try:
            ids = await q.add_jobs([("j", 2), ("j", 3)])
            done = {}
            for jid in ids:
                info = await wait_for_status(q, jid, JobStatus.COMPLETED, timeout=DONE_S)
                done[jid] = info.result
            gc.collect()  # what the ended loop left is collected here, in this loop
            await asyncio.sleep(0.1)
            left = await q.get_job_status(first[0])
            assert left is not None and left.status == JobStatus.ACTIVE  # its lease runs
            return done
        finally:
            await q.close()

    try:
        with caplog.at_level(logging.INFO):
            done = asyncio.run(asyncio.wait_for(the_next_loop(), 3 * DONE_S))
            gc.collect()
    finally:
        hold.set()  # the thread of job 1 (def) ends
    assert sorted(done.values()) == [4, 6]
    assert any("left running when its event loop ended" in r.getMessage() for r in caplog.records)
    assert _errors(caplog) == []


def test_the_services_run_again_in_the_next_loop(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A leader service campaigning when the loop ended campaigns again (and leads)
    in the next loop; the services' stop there logs no error (the eviction watch's
    delayed start, a task of the closed loop, failed its stop)."""
    _collect_what_earlier_tests_left(caplog)
    q = _queue(redis_url, prefix)  # the scheduler runs too
    led: list[asyncio.AbstractEventLoop] = []

    async def body(term: int) -> None:
        led.append(asyncio.get_running_loop())
        await asyncio.sleep(3600)

    q.add_service(LeaderService("probe", body, lease_ms=300))

    @q.process("j")
    async def run(job: Any) -> int:
        return int(job.data)

    async def a_loop_that_ends_without_close() -> None:
        await q.start()
        await wait_until(lambda: led, DONE_S)  # leading there when the loop ends

    _in_a_loop_closed_after(a_loop_that_ends_without_close)

    async def the_next_loop() -> int:
        await q.close()
        await q.start()
        try:
            here = asyncio.get_running_loop()
            await wait_until(lambda: here in led, DONE_S)  # once the old lease expired
            jid = await q.add_job("j", 5)
            info = await wait_for_status(q, jid, JobStatus.COMPLETED, timeout=DONE_S)
            gc.collect()
            return int(info.result)
        finally:
            await q.close()

    with caplog.at_level(logging.INFO):
        assert asyncio.run(asyncio.wait_for(the_next_loop(), 3 * DONE_S)) == 5
    assert _errors(caplog) == []
