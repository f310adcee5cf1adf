"""A run always ends in an outcome and frees its slot, whatever the processor throws.

* A processor raising a ``BaseException`` that is not an ``Exception`` (a custom abort
  signal), or a batch processor returning one as a job's result, fails or retries the
  job like any processor error, with a reason naming the type; the slot is freed and the
  worker goes on. A ``CancelledError`` the processor raises while its run was not
  cancelled is such an error too (handing the job back would run it again for ever).
* A batch function raising such an exception fails every job of its batch; a
  ``StopIteration`` returned for a job, or raised in a thread (asyncio cannot hand it
  over as it is), fails the job as a ``RuntimeError`` naming it.
* A ``RetryLater`` whose ``delay_ms`` or ``reason`` raises when read never wedges its
  job: an unreadable delay fails the job saying why; an unreadable reason defers it
  with a reason saying so.
* ``KeyboardInterrupt`` / ``SystemExit`` still end the process; the job keeps its lease
  and is recovered once it expires (a stall), and ``close()`` in a ``finally`` does not
  wait for the flush timeout.
* The done callback of a run's task records an outcome for a run that ended without
  one (an error escaping the runner, a task cancelled before its first step).
* ``stop()`` honours ``shutdown_timeout`` when a processor ignores its cancellation, and
  says what happened instead of "could not flush 0 outcome(s) ... (Redis unreachable)".

Every test runs on the session's real Redis and reads the job's state back from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import JobQueue, JobStatus, RetryLater

pytestmark = pytest.mark.timeout(60)

FAST_RETRY = {"type": "fixed", "delay": 10}
ENDED = (JobStatus.FAILED, JobStatus.DLQ)


class Abort(BaseException):
    """A custom abort signal: a BaseException that is not an Exception."""


class BadDelay(RetryLater):
    @property  # type: ignore[override]
    def delay_ms(self) -> Any:
        raise RuntimeError("delay lookup failed")

    @delay_ms.setter
    def delay_ms(self, value: Any) -> None:
        pass


class BadReason(RetryLater):
    @property  # type: ignore[override]
    def reason(self) -> Any:
        raise KeyError("reason")

    @reason.setter
    def reason(self, value: Any) -> None:
        pass


@pytest.fixture
async def make(redis_url: str, prefix: str) -> AsyncIterator[QueueFactory]:
    """Queues on the session's real Redis."""
    factory = QueueFactory(redis_url, prefix)
    yield factory
    await factory.aclose()


def _queue(make: QueueFactory, concurrency: int = 1, **kwargs: Any) -> JobQueue:
    kwargs.setdefault("retry", {"max_attempts": 1})
    return make(worker={"concurrency": concurrency, "shutdown_timeout": 5000}, **kwargs)


def _never_retrieved(caplog: pytest.LogCaptureFixture) -> list[str]:
    gc.collect()  # an unretrieved task exception is reported when the task is collected
    return [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()]


async def _stream(q: JobQueue, job_id: str) -> list[dict[str, str]]:
    """Entries of the durable event stream of one job (decoded)."""
    client = await q.client()
    entries = [
        {k.decode(): v.decode() for k, v in raw.items()}
        for _, raw in await client.xrange(q.keys.events)
    ]
    return [e for e in entries if e.get("id") == job_id]


async def _close_within(q: JobQueue, seconds: float) -> float:
    t0 = time.monotonic()
    await asyncio.wait_for(q.close(), seconds)
    return time.monotonic() - t0


# ================================================================ BaseException


@pytest.mark.parametrize("kind", ["async", "thread"])
async def test_base_exception_fails_the_job_and_frees_the_slot(
    make: QueueFactory, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    q = _queue(make)

    if kind == "async":

        @q.process("bad")
        async def bad(job: Any) -> None:
            raise Abort("stop")

    else:

        @q.process("bad")
        def bad_sync(job: Any) -> None:
            raise Abort("stop")

    @q.process("good")
    async def good(job: Any) -> str:
        return "ok"

    bad_id = await q.add_job("bad", {})
    await q.start()
    info = await wait_for_status(q, bad_id, *ENDED)
    assert info.failed_reason == "Abort: stop"
    assert "Abort" in (info.stacktrace or "")
    # The only slot was freed: the next job runs.
    good_id = await q.add_job("good", {})
    assert (await wait_for_status(q, good_id, JobStatus.COMPLETED)).result == "ok"
    stats = await q.get_stats()
    assert stats.active == 0 and stats.waiting == 0
    assert await _close_within(q, 10) < 3
    assert not _never_retrieved(caplog)


async def test_base_exception_follows_the_retry_policy(make: QueueFactory) -> None:
    q = _queue(make)
    runs: list[int] = []

    @q.process("flaky")
    async def flaky(job: Any) -> str:
        runs.append(job.attempts)
        if len(runs) < 3:
            raise Abort(f"abort {len(runs)}")
        return "done"

    jid = await q.add_job("flaky", attempts=3, backoff=FAST_RETRY)
    await q.start()
    info = await wait_for_status(q, jid, JobStatus.COMPLETED)
    assert info.result == "done" and runs == [1, 2, 3]
    retries = [e for e in await _stream(q, jid) if e.get("e") == "job-retrying"]
    assert len(retries) == 2, retries
    for n, entry in enumerate(retries, 1):
        assert any(f"Abort: abort {n}" in v for v in entry.values()), entry

    spent = await q.add_job("flaky-out", attempts=2, backoff=FAST_RETRY)

    @q.process("flaky-out")
    async def always(job: Any) -> None:
        raise Abort("again")

    info = await wait_for_status(q, spent, *ENDED)
    assert info.attempts == 2 and info.failed_reason == "Abort: again"


async def test_cancelled_error_raised_by_the_processor_is_a_failure(make: QueueFactory) -> None:
    if sys.version_info < (3, 11):
        pytest.skip("telling a real cancellation apart needs Task.cancelling() (3.11+)")
    q = _queue(make)
    runs: list[int] = []

    @q.process("bad")
    async def bad(job: Any) -> None:
        runs.append(job.attempts)
        raise asyncio.CancelledError()

    jid = await q.add_job("bad", attempts=2, backoff=FAST_RETRY)
    await q.start()
    info = await wait_for_status(q, jid, *ENDED)
    # Before: handed back unspent, so it ran again at once, thousands of times a second.
    assert len(runs) == 2 and info.attempts == 2
    assert info.failed_reason is not None
    assert info.failed_reason.startswith("CancelledError")
    assert "the run was not cancelled" in info.failed_reason


async def test_real_cancellations_keep_their_outcomes(make: QueueFactory) -> None:
    """Timeout, cancel_job() and shutdown still cancel runs as before."""
    # Leases renewed every 150 ms: the renewal is what notices cancel_job().
    q = _queue(make, concurrency=3, settings={"lock_duration": 300})
    started = asyncio.Event()

    @q.process("slow")
    async def slow(job: Any) -> None:
        started.set()
        await asyncio.sleep(30)

    timed = await q.add_job("slow", timeout=100)
    await q.start()
    info = await wait_for_status(q, timed, *ENDED)
    assert "exceeded its timeout of 100 ms" in (info.failed_reason or "")

    cancelled = await q.add_job("slow")
    await wait_for_status(q, cancelled, JobStatus.ACTIVE)
    assert await q.cancel_job(cancelled) == "cancelling"
    info = await wait_for_status(q, cancelled, *ENDED)
    assert info.failed_reason == "cancelled by cancel_job()"

    held = await q.add_job("slow")
    await wait_for_status(q, held, JobStatus.ACTIVE)
    assert q.worker is not None
    await asyncio.wait_for(q.worker.stop(timeout_ms=100), 10)
    info = await q.get_job_status(held)
    assert info is not None and info.status == JobStatus.WAITING and info.attempts == 0


# ================================================================ batches


async def test_batch_items_that_are_base_exceptions_or_bad_retry_laters(
    make: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    q = _queue(make, concurrency=6)

    @q.process_batch("base", size=3, max_wait=50)
    async def base(jobs: list[Any]) -> list[Any]:
        return [Abort(f"item {j.data}") for j in jobs]

    @q.process_batch("baddelay", size=3, max_wait=50)
    async def baddelay(jobs: list[Any]) -> list[Any]:
        return [BadDelay(5) for _ in jobs]

    @q.process("good")
    async def good(job: Any) -> int:
        return 1

    base_ids = await q.add_jobs([("base", i) for i in range(3)])
    delay_ids = await q.add_jobs([("baddelay", i) for i in range(3)])
    await q.start()
    for i, jid in enumerate(base_ids):
        info = await wait_for_status(q, jid, *ENDED)
        assert info.failed_reason == f"Abort: item {i}"
    for jid in delay_ids:
        info = await wait_for_status(q, jid, *ENDED)
        assert "invalid delay_ms (RuntimeError: delay lookup failed)" in (info.failed_reason or "")
    good_id = await q.add_job("good", 0)
    await wait_for_status(q, good_id, JobStatus.COMPLETED)
    assert (await q.get_stats()).active == 0
    assert await _close_within(q, 10) < 3
    assert not _never_retrieved(caplog)


@pytest.mark.parametrize("kind", ["async", "thread"])
async def test_batch_function_raising_a_base_exception_fails_every_job(
    make: QueueFactory, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """Before: ``_run`` caught only ``Exception``; the jobs stayed active until shutdown."""
    q = _queue(make, concurrency=3)

    if kind == "async":

        @q.process_batch("abort", size=3, max_wait=50)
        async def abort(jobs: list[Any]) -> None:
            raise Abort("whole batch")

    else:

        @q.process_batch("abort", size=3, max_wait=50)
        def abort_sync(jobs: list[Any]) -> None:
            raise Abort("whole batch")

    @q.process("good")
    async def good(job: Any) -> int:
        return 1

    ids = await q.add_jobs([("abort", i) for i in range(3)])
    await q.start()
    for jid in ids:
        info = await wait_for_status(q, jid, *ENDED)
        assert info.failed_reason == "Abort: whole batch"
    # Every slot was freed: the next job runs.
    good_id = await q.add_job("good", 0)
    await wait_for_status(q, good_id, JobStatus.COMPLETED)
    assert (await q.get_stats()).active == 0
    assert await _close_within(q, 10) < 3
    assert not _never_retrieved(caplog)


async def test_batch_function_raising_cancelled_error_fails_every_job(
    make: QueueFactory,
) -> None:
    if sys.version_info < (3, 11):
        pytest.skip("telling a real cancellation apart needs Task.cancelling() (3.11+)")
    q = _queue(make, concurrency=2)
    calls: list[int] = []

    @q.process_batch("cancel", size=2, max_wait=50)
    async def cancel(jobs: list[Any]) -> None:
        calls.append(len(jobs))
        raise asyncio.CancelledError()

    ids = await q.add_jobs([("cancel", i) for i in range(2)])
    await q.start()
    for jid in ids:
        info = await wait_for_status(q, jid, *ENDED)
        assert (info.failed_reason or "").startswith("CancelledError"), info.failed_reason
        assert "the run was not cancelled" in (info.failed_reason or "")
    assert calls == [2]  # failed, not handed back to run again
    assert await _close_within(q, 10) < 3


async def test_stop_iteration_in_a_batch_reply_or_a_thread_fails_the_job(
    make: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """asyncio refuses a StopIteration in a future (TypeError), and a thread's never
    reaches the awaiting task: before, these jobs stayed active until shutdown."""
    q = _queue(make, concurrency=4)

    @q.process_batch("items", size=3, max_wait=50)
    async def items(jobs: list[Any]) -> list[Any]:
        return [StopIteration("first"), StopAsyncIteration("second"), "third"]

    @q.process_batch("sync-stop", size=2, max_wait=50)
    def sync_stop(jobs: list[Any]) -> list[Any]:
        raise StopIteration("from the batch thread")

    @q.process("thread-stop")
    def thread_stop(job: Any) -> None:
        raise StopIteration("from the thread")

    item_ids = await q.add_jobs([("items", i) for i in range(3)])
    sync_ids = await q.add_jobs([("sync-stop", i) for i in range(2)])
    thread_id = await q.add_job("thread-stop", {})
    await q.start()
    first = await wait_for_status(q, item_ids[0], *ENDED)
    second = await wait_for_status(q, item_ids[1], *ENDED)
    third = await wait_for_status(q, item_ids[2], JobStatus.COMPLETED)
    assert (first.failed_reason or "").startswith("RuntimeError: StopIteration: first")
    assert (second.failed_reason or "").startswith("RuntimeError: StopAsyncIteration: second")
    assert third.result == "third"
    for jid in sync_ids:
        info = await wait_for_status(q, jid, *ENDED)
        reason = info.failed_reason or ""
        assert reason.startswith("RuntimeError: StopIteration: from the batch thread"), reason
    info = await wait_for_status(q, thread_id, *ENDED)
    reason = info.failed_reason or ""
    assert reason.startswith("RuntimeError: StopIteration: from the thread"), reason
    assert (await q.get_stats()).active == 0
    assert await _close_within(q, 10) < 3
    assert not _never_retrieved(caplog)


# ================================================================ RetryLater attributes


async def test_retry_later_whose_delay_raises_fails_the_job(make: QueueFactory) -> None:
    q = _queue(make)

    @q.process("bad-delay")
    async def bad(job: Any) -> None:
        raise BadDelay(100)

    @q.process("good")
    async def good(job: Any) -> str:
        return "ok"

    jid = await q.add_job("bad-delay", {})
    await q.start()
    info = await wait_for_status(q, jid, *ENDED)
    assert info.failed_reason is not None
    assert info.failed_reason.startswith("BadDelay")
    assert "invalid delay_ms (RuntimeError: delay lookup failed)" in info.failed_reason
    good_id = await q.add_job("good", {})
    await wait_for_status(q, good_id, JobStatus.COMPLETED)
    assert await _close_within(q, 10) < 3


async def test_retry_later_whose_reason_raises_is_deferred(make: QueueFactory) -> None:
    q = _queue(make)
    runs: list[int] = []

    @q.process("bad-reason")
    async def bad(job: Any) -> str:
        runs.append(job.attempts)
        if len(runs) == 1:
            raise BadReason(300)
        return "second run"

    jid = await q.add_job("bad-reason", {})
    await q.start()
    info = await wait_for_status(q, jid, JobStatus.COMPLETED)
    assert info.result == "second run" and runs == [1, 1]  # deferring spent no attempt
    deferred = [e for e in await _stream(q, jid) if e.get("e") == "job-delayed"]
    assert len(deferred) == 1 and deferred[0]["delay"] == "300", deferred
    reason = deferred[0]["reason"]
    assert reason.startswith("BadReason") and "cannot be read" in reason, reason
    assert "KeyError" in reason, reason
    assert await _close_within(q, 10) < 3


# ================================================================ the safety net


async def test_an_error_escaping_the_runner_still_records_an_outcome(
    make: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    q = _queue(make)

    @q.process("later")
    async def later(job: Any) -> None:
        raise RetryLater(10)

    @q.process("good")
    async def good(job: Any) -> str:
        return "ok"

    await q.start()
    assert q.worker is not None

    def broken(run: Any, exc: Any) -> None:
        raise RuntimeError("injected runner bug")

    q.worker.runner.deferred = broken  # type: ignore[method-assign]
    jid = await q.add_job("later", {})
    info = await wait_for_status(q, jid, *ENDED)
    assert info.failed_reason == "RuntimeError: injected runner bug"
    good_id = await q.add_job("good", {})
    await wait_for_status(q, good_id, JobStatus.COMPLETED)
    assert any("escaped its run" in r.getMessage() for r in caplog.records)
    assert await _close_within(q, 10) < 3
    assert not _never_retrieved(caplog)


async def test_a_run_cancelled_before_it_started_is_handed_back(make: QueueFactory) -> None:
    q = _queue(make)
    calls: list[int] = []

    @q.process("job")
    async def job_fn(job: Any) -> str:
        calls.append(job.attempts)
        return "ran"

    await q.start()
    worker = q.worker
    assert worker is not None
    original = worker.runner.launch
    cancelled: list[str] = []

    def launch(entry: list[Any], token: str, hand_back: bool = False) -> None:
        original(entry, token, hand_back)
        job_id = entry[0].decode()
        run = worker.leases.runs.get(job_id)
        if run is not None and run.task is not None and not cancelled:
            cancelled.append(job_id)
            run.task.cancel()  # before its first step: run()'s handlers never run

    worker.runner.launch = launch  # type: ignore[method-assign]
    jid = await q.add_job("job", {})
    info = await wait_for_status(q, jid, JobStatus.COMPLETED)
    assert cancelled == [jid] and info.result == "ran" and len(calls) == 1
    assert not worker.leases.runs
    assert await _close_within(q, 10) < 3


# ================================================================ shutdown


async def test_stop_honours_shutdown_timeout_when_a_run_ignores_cancellation(
    make: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    q = make(worker={"concurrency": 2, "shutdown_timeout": 300})
    release = asyncio.Event()
    tasks: list[asyncio.Task[Any]] = []

    @q.process("stubborn")
    async def stubborn(job: Any) -> str:
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):  # ignores its cancellation
                await asyncio.sleep(0.02)
        return "late"

    jid = await q.add_job("stubborn", {})
    await q.start()
    await wait_for_status(q, jid, JobStatus.ACTIVE)
    await wait_until(lambda: tasks)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kitium_queue"):
        t0 = time.monotonic()
        closing = asyncio.ensure_future(q.close())
        try:
            # shutdown_timeout (0.3 s) + the part of the flush bound a cancelled run is
            # given to end (half of it); not the 30 s flush timeout on top.
            done, _ = await asyncio.wait({closing}, timeout=12)
            took = time.monotonic() - t0
        finally:
            # Let the run end in any case, so a regression fails here instead of hanging
            # the fixture's teardown.
            release.set()
            await asyncio.wait({closing, *tasks}, timeout=40)
    assert done and took < 8, f"close() took {took:.1f} s"
    messages = [r.getMessage() for r in caplog.records]
    assert any("did not end after being cancelled" in m for m in messages), messages
    assert not any("Redis unreachable" in m or "could not flush" in m for m in messages)
    # Left leased: it runs again once the lease expires; its late result is not recorded.
    q2 = make()
    info = await q2.get_job_status(jid)
    assert info is not None and info.status == JobStatus.ACTIVE


async def test_unflushed_report_never_claims_zero_outcomes_or_an_outage(
    make: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    q = _queue(make)
    await q.start()
    worker = q.worker
    assert worker is not None
    with caplog.at_level(logging.ERROR, logger="kitium_queue"):
        worker.outcomes.report_unflushed(True, 1.0, False, False)
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "0 outcome(s)" not in text and "Redis unreachable" not in text
    assert "did not end within 1.0 s" in text


_CHILD = """
import asyncio, sys
from kitium_queue import JobQueue

SIGNAL = {{"ki": KeyboardInterrupt, "se": SystemExit}}[{kind!r}]


async def main():
    q = JobQueue(
        "q", redis={url!r}, prefix={prefix!r},
        worker={{"concurrency": 2, "shutdown_timeout": 5000}},
        settings={{"lock_duration": 1000, "max_stalled_interval": 250}},
    )

    @q.process("bye")
    async def bye(job):
        raise SIGNAL("processor says bye")

    try:
        await q.start()
        print("started", flush=True)
        await asyncio.sleep(30)
    finally:
        await q.close()
        print("closed", flush=True)


asyncio.run(main())
"""


@pytest.mark.parametrize("kind", ["ki", "se"])
async def test_keyboard_interrupt_and_system_exit_end_the_process_job_recovered(
    make: QueueFactory, redis_url: str, prefix: str, tmp_path: Path, kind: str
) -> None:
    q = make("q", settings={"lock_duration": 1000, "max_stalled_interval": 250})
    jid = await q.add_job("bye", {})
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(_CHILD.format(kind=kind, url=redis_url, prefix=prefix)))
    t0 = time.monotonic()
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=40,
    )
    took = time.monotonic() - t0
    # The signal ended the process (not the 30 s sleep), and close() in the finally did
    # not wait 30 s for the flush timeout.
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "closed" in proc.stdout, proc.stdout + proc.stderr
    assert took < 15, (took, proc.stderr)
    assert "processor raised" in proc.stderr and "stays leased" in proc.stderr, proc.stderr
    # Not lost: still leased, then recovered (a stall) and run by the next worker.
    info = await q.get_job_status(jid)
    assert info is not None and info.status == JobStatus.ACTIVE

    @q.process("bye")
    async def fine(job: Any) -> str:
        return "recovered"

    await q.start()
    info = await wait_for_status(q, jid, JobStatus.COMPLETED, timeout=10)
    assert info.result == "recovered" and info.stalls == 1
