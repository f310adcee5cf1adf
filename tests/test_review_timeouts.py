"""Job timeouts, ``cancel_job()`` of running jobs and long jobs, on a real Redis.

* A run that ends here (its timeout, an outcome) while a renewal of its lease is under
  way: the renewal's reply, taken after the finish, lists the job as no longer leased.
  That is no lost lease: the worker said "lease of job N expired ... handed to another
  worker" (or "removed while it ran" for a job removed on completion) for a job that
  ended normally. The finish's own fencing says when a lease was really lost.
* A plain ``def`` processor past its timeout (or ``cancel_job()``) runs on in its thread
  beside the job's retry: a WARNING names the job (nothing said it before).
* An ``async def`` processor that catches the ``CancelledError`` of its timeout and
  returns: completed, its slot and lease held until then, and a WARNING says so
  (nothing said it before).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest

from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import JobQueue, JobStatus

pytestmark = [pytest.mark.redis_only, pytest.mark.timeout(60)]

_LOGGER = "kitium_queue.worker"


@pytest.fixture
async def make(redis_url: str, prefix: str) -> Any:
    factory = QueueFactory(redis_url, prefix)
    yield factory
    await factory.aclose()


def _held_renewals(q: JobQueue) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold the worker's lease renewals (``extend`` pipelines) until the first event is
    set; the second is set when one is held."""
    gate, held = asyncio.Event(), asyncio.Event()
    real = q.scripts.pipeline

    async def pipeline(client: Any, calls: Any) -> Any:
        if any(getattr(c, "script", None) == "extend" for c in calls) and not gate.is_set():
            held.set()
            await gate.wait()
        return await real(client, calls)

    q.scripts.pipeline = pipeline  # type: ignore[method-assign]
    return gate, held


def _said(caplog: pytest.LogCaptureFixture, *parts: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == _LOGGER and all(p in r.getMessage() for p in parts)
    ]


@pytest.mark.parametrize("end", ["timeout", "removed-on-complete"])
async def test_a_run_ending_while_its_renewal_is_under_way_is_not_called_lost(
    make: QueueFactory, caplog: pytest.LogCaptureFixture, end: str
) -> None:
    """The renewal is sent with the run held, the run ends (its timeout fires; or it
    completes and its record is removed) and its outcome is recorded, then the renewal
    reaches Redis: no lost-lease or removed warning, the job's state is its outcome's."""
    caplog.set_level(logging.WARNING, logger=_LOGGER)
    q = make(
        "renewing",
        worker={"concurrency": 1, "scheduler": False},
        settings={"lock_duration": 1000},
    )
    gate, held = _held_renewals(q)

    async def work(job: Any) -> str:
        await held.wait()  # a renewal holding this run is under way
        if job.data["hang"]:
            await asyncio.sleep(30)
        return "ok"

    q.process("work", work)
    await q.start()
    if end == "timeout":
        jid = await q.add_job("work", {"hang": True}, timeout=800, attempts=2, backoff=60_000)
        await wait_for_status(q, jid, JobStatus.DELAYED, timeout=10)
    else:
        jid = await q.add_job("work", {"hang": False}, remove_on_complete=True)
        await wait_until(lambda: held.is_set(), timeout=10)

        async def gone() -> bool:
            return await q.get_job_status(jid) is None

        await wait_until(gone, timeout=10)
    gate.set()
    w = q.worker
    assert w is not None
    await asyncio.sleep(1.2)  # the held renewal's reply, and the next renewals
    assert not _said(caplog, "lease of job"), caplog.text
    assert not _said(caplog, "removed while it ran"), caplog.text
    info = await q.get_job_status(jid)
    if end == "timeout":
        assert info is not None and info.status is JobStatus.DELAYED
        assert "exceeded its timeout" in (info.failed_reason or "")
    else:
        assert info is None


async def test_a_lease_really_lost_while_the_renewal_is_under_way_is_still_abandoned(
    make: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The other side of the race above: a run still held here whose lease another
    worker took is abandoned at the renewal's reply, with its warning."""
    caplog.set_level(logging.WARNING, logger=_LOGGER)
    q = make(
        "lost",
        worker={"concurrency": 1, "scheduler": False},
        settings={"lock_duration": 1000, "max_stalled_interval": 60_000},
    )
    gate, held = _held_renewals(q)
    cancelled = asyncio.Event()

    async def work(job: Any) -> str:
        try:
            await asyncio.sleep(30)
        finally:
            cancelled.set()  # by the abandonment: the sleep outlasts the test
        return "ok"

    q.process("work", work)
    await q.start()
    jid = await q.add_job("work", {})
    await wait_until(lambda: held.is_set(), timeout=10)
    await asyncio.sleep(1.1)  # the lease expires
    back, _ = await q.recover_stalled()  # requeued: the lease is no longer ours
    assert back == [jid]
    gate.set()
    await asyncio.wait_for(cancelled.wait(), 10)
    assert _said(caplog, "lease of job", jid)


async def test_a_thread_past_its_timeout_is_said_to_run_beside_the_retry(
    make: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A plain ``def`` processor past its timeout: the job is retried at once (slot
    freed, as documented) while the first thread still runs; a WARNING names the job and
    says so. Its late return is ignored: the retry's outcome is the job's."""
    caplog.set_level(logging.WARNING, logger=_LOGGER)
    q = make("threads", worker={"concurrency": 1, "scheduler": False})
    release = threading.Event()
    running = 0
    most = 0
    lock = threading.Lock()

    def work(job: Any) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            if job.attempts == 1:
                release.wait(20)
                return 1
            return 2
        finally:
            with lock:
                running -= 1

    q.process("work", work)
    await q.start()
    jid = await q.add_job("work", {}, timeout=300, attempts=2, backoff=10)
    try:
        info = await wait_for_status(q, jid, JobStatus.COMPLETED, timeout=15)
    finally:
        release.set()
    assert info.result == 2 and info.attempts == 2
    warned = _said(caplog, f"job {jid} (work) was ended by its timeout", "runs")
    assert len(warned) == 1, caplog.text
    assert "retry may run beside this thread" in warned[0]


async def test_an_async_processor_that_catches_its_timeout_is_said_to(
    make: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """It catches the ``CancelledError`` of its timeout and returns: completed with its
    result (no retry, which would run its side effects again), its lease renewed
    meanwhile (a lease of 1 s, a run of 1.6 s: no stall), and a WARNING says so."""
    caplog.set_level(logging.WARNING, logger=_LOGGER)
    q = make(
        "stubborn",
        worker={"concurrency": 1, "scheduler": False},
        settings={"lock_duration": 1000},
    )
    caught = 0

    async def work(job: Any) -> str:
        nonlocal caught
        loop = asyncio.get_running_loop()
        end = loop.time() + 1.6
        while loop.time() < end:
            try:
                await asyncio.sleep(end - loop.time())
            except asyncio.CancelledError:
                caught += 1
        return "kept"

    q.process("work", work)
    await q.start()
    jid = await q.add_job("work", {}, timeout=300, attempts=2)
    info = await wait_for_status(q, jid, JobStatus.COMPLETED, timeout=15)
    assert info.result == "kept" and info.attempts == 1 and info.stalls == 0
    assert caught == 1
    warned = _said(caplog, f"job {jid} (work) caught the cancellation of its timeout")
    assert len(warned) == 1, caplog.text
    assert "result is kept" in warned[0]
