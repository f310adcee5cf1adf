"""Batch processors (``queue.process_batch``): batch sizes, minimum size and maximum
wait, and one outcome per job (results, exceptions, retries, DLQ)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import ConfigurationError, JobQueue, JobStatus, NonRetryableError, RetryLater


def _queue(make_queue: QueueFactory, concurrency: int = 10) -> JobQueue:
    return make_queue(
        worker={"concurrency": concurrency, "scheduler": False}, retry={"max_attempts": 1}
    )


async def test_batches_never_exceed_size_and_each_job_gets_its_result(
    make_queue: QueueFactory,
) -> None:
    q = _queue(make_queue)
    sizes: list[int] = []

    @q.process_batch("double", size=4)
    async def double(jobs: list[Any]) -> list[int]:
        sizes.append(len(jobs))
        return [j.data * 2 for j in jobs]

    ids = await q.add_jobs([("double", i) for i in range(10)])
    await q.start()
    for i, jid in enumerate(ids):
        info = await wait_for_status(q, jid, JobStatus.COMPLETED)
        assert info.result == i * 2
    assert sum(sizes) == 10 and max(sizes) == 4
    assert sizes[:2] == [4, 4]  # 10 jobs claimed together: two full batches, then the rest


async def test_min_size_waits_up_to_max_wait(make_queue: QueueFactory) -> None:
    q = _queue(make_queue)
    calls: list[tuple[float, int]] = []

    @q.process_batch("j", size=10, min_size=3, max_wait=400)
    async def handle(jobs: list[Any]) -> None:
        calls.append((time.monotonic(), len(jobs)))

    await q.start()
    t0 = time.monotonic()
    await q.add_jobs([("j", 1), ("j", 2)])
    await wait_until(lambda: calls, timeout=3)
    waited, n = calls[0][0] - t0, calls[0][1]
    assert n == 2 and 0.35 <= waited < 1.0, (n, waited)  # below min_size: after max_wait
    t1 = time.monotonic()
    await q.add_jobs([("j", i) for i in range(3)])
    await wait_until(lambda: len(calls) == 2, timeout=3)
    assert calls[1][1] == 3 and calls[1][0] - t1 < 0.2  # min_size reached: at once


async def test_one_outcome_per_job(make_queue: QueueFactory) -> None:
    q = make_queue(worker={"concurrency": 10, "scheduler": False}, dlq={"enabled": True})
    deferred: set[str] = set()

    @q.process_batch("mix", size=5, min_size=5, max_wait=2000)
    async def mix(jobs: list[Any]) -> list[Any]:
        out: list[Any] = []
        for j in jobs:
            if j.data == "fail-once" and j.attempts == 1:
                out.append(ValueError("flaky"))
            elif j.data == "fatal":
                out.append(NonRetryableError("bad input"))
            elif j.data == "later" and j.id not in deferred:
                deferred.add(j.id)
                out.append(RetryLater(100))
            else:
                out.append(f"done:{j.data}")
        return out

    opts = {"attempts": 2, "backoff": {"type": "fixed", "delay": 50}}
    names = ["ok", "fail-once", "fatal", "later", "ok2"]
    ids = dict(zip(names, await q.add_jobs([("mix", n, opts) for n in names]), strict=True))
    await q.start()
    assert (await wait_for_status(q, ids["ok"], JobStatus.COMPLETED)).result == "done:ok"
    fatal = await wait_for_status(q, ids["fatal"], JobStatus.DLQ)
    assert "bad input" in (fatal.failed_reason or "")
    # min_size 5: the retried jobs run in a later batch after max_wait.
    flaky = await wait_for_status(q, ids["fail-once"], JobStatus.COMPLETED, timeout=6)
    assert flaky.result == "done:fail-once" and flaky.attempts == 2
    later = await wait_for_status(q, ids["later"], JobStatus.COMPLETED, timeout=6)
    assert later.attempts == 1  # RetryLater: no attempt spent


async def test_raising_fails_every_job_and_bad_replies_are_explained(
    make_queue: QueueFactory,
) -> None:
    q = _queue(make_queue)

    @q.process_batch("boom", size=3)
    async def boom(jobs: list[Any]) -> None:
        raise RuntimeError("downstream down")

    @q.process_batch("short", size=3)
    def short(jobs: list[Any]) -> list[int]:  # a plain function runs in a thread
        return [1]

    @q.process_batch("keyed", size=3)
    async def keyed(jobs: list[Any]) -> dict[str, Any]:
        return {j.id: j.data + 1 for j in jobs}

    boom_ids = await q.add_jobs([("boom", i) for i in range(3)])
    short_ids = await q.add_jobs([("short", i) for i in range(3)])
    keyed_ids = await q.add_jobs([("keyed", i) for i in range(3)])
    await q.start()
    for jid in boom_ids:
        info = await wait_for_status(q, jid, JobStatus.DLQ)
        assert "downstream down" in (info.failed_reason or "")
    for jid in short_ids:
        info = await wait_for_status(q, jid, JobStatus.DLQ)
        assert "returned 1 results for" in (info.failed_reason or "")
    for i, jid in enumerate(keyed_ids):
        assert (await wait_for_status(q, jid, JobStatus.COMPLETED)).result == i + 1


async def test_a_job_that_times_out_leaves_its_batch(make_queue: QueueFactory) -> None:
    q = _queue(make_queue)
    got: list[list[Any]] = []

    @q.process_batch("t", size=10, min_size=3, max_wait=600)
    async def handle(jobs: list[Any]) -> None:
        got.append([j.data for j in jobs])

    short = await q.add_job("t", "short", timeout=150)
    await q.add_job("t", "long")
    await q.start()
    info = await wait_for_status(q, short, JobStatus.DLQ, timeout=3)
    assert "timeout" in (info.failed_reason or "")
    await wait_until(lambda: got, timeout=3)
    assert got == [["long"]]


def test_batch_options_are_validated() -> None:
    q = JobQueue("b")

    async def fn(jobs: list[Any]) -> None:
        return None

    with pytest.raises(ConfigurationError, match="batch size must be an int >= 1"):
        q.process_batch("x", fn, size=0)
    with pytest.raises(ConfigurationError, match="min_size must be an int from 1 to size"):
        q.process_batch("x", fn, size=3, min_size=4)
    with pytest.raises(ConfigurationError, match="batch max_wait"):
        q.process_batch("x", fn, size=3, max_wait=-1)
    asyncio.run(q.close())
