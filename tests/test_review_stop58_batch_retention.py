"""Batch processors, retention of the event stream and compression, reviewed by
reproduction on a real Redis.

* ``features/batches.py``: a queue closed while a batch waited below ``min_size`` and
  started again in another event loop left the collector with the old loop's timer, so
  no new batch armed one and jobs below ``min_size`` waited until their timeout; in one
  loop, a job arriving after every job of a batch left was dispatched at the old
  batch's ``max_wait``, not its own. A batch function returning an awaitable (a plain
  decorator around an ``async def``, a lambda) failed every job ("got coroutine") where
  a processor's is awaited; an async generator function was taken and failed every job;
  ``size`` had no upper bound (2**100 was taken).
* ``features/retention/stream.py``: a rewrite of the event stream held a lease it never
  renewed and swapped without checking it. One outlived by its lease (a long copy, a
  stalled process) swapped its copy over another rewrite's: erased entries came back
  and kept ones were lost. It renews the lease now, and the swap is fenced by it.
* ``features/compression.py``: a value longer than the codec's ``max_size`` was stored
  compressed, which ``decode`` refuses: the job was accepted, then dead-lettered as
  "undecodable payload". Such a value is stored as it is now.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import threading
import time
from typing import Any

import pytest

from helpers import QueueFactory, wait_for_status
from kitium_queue import ConfigurationError, JobQueue, JobStatus
from kitium_queue.features.compression import MAGIC, CompressionCodec
from kitium_queue.features.retention import stream


# ---------------------------------------------------------------------------- batches
def _batching(q: JobQueue, size: int, min_size: int) -> list[list[Any]]:
    """Register an echoing batch processor for "j" (max_wait 800 ms); its calls' data."""
    calls: list[list[Any]] = []

    @q.process_batch("j", size=size, min_size=min_size, max_wait=800)
    async def handle(jobs: list[Any]) -> list[Any]:
        calls.append([j.data for j in jobs])
        return [j.data for j in jobs]

    return calls


async def _one_waiting_in_its_batch(q: JobQueue) -> str:
    """Start ``q``, add job 1 and let it wait in its batch (below min_size)."""
    await q.start()
    jid = await q.add_job("j", 1)
    await wait_for_status(q, jid, JobStatus.ACTIVE)
    await asyncio.sleep(0.1)
    return jid


def test_a_batch_below_min_size_is_dispatched_after_a_restart_in_another_loop(
    redis_url: str, prefix: str
) -> None:
    q = JobQueue(
        "bloop",
        redis=redis_url,
        prefix=prefix,
        worker={"concurrency": 10, "scheduler": False, "shutdown_timeout": 200},
    )
    calls = _batching(q, size=5, min_size=3)

    async def first() -> str:
        jid = await _one_waiting_in_its_batch(q)
        await q.close()  # the stop's grace ends before max_wait: the job is handed back
        return jid

    async def second(first_id: str) -> list[Any]:
        try:
            await q.start()
            jid = await q.add_job("j", 2)
            done = [
                await wait_for_status(q, i, JobStatus.COMPLETED, timeout=6) for i in (first_id, jid)
            ]
            return [d.result for d in done]
        finally:
            await q.close()

    first_id = asyncio.run(first())
    assert calls == []
    assert asyncio.run(second(first_id)) == [1, 2]
    assert sorted(x for c in calls for x in c) == [1, 2]


def test_jobs_of_a_loop_that_ended_unclosed_never_join_a_batch_of_the_next(
    redis_url: str, prefix: str
) -> None:
    """A loop closed without cancelling its tasks (a hand-run loop, a notebook's) left
    its jobs in the collector: they made up a batch of the next loop's worker with its
    own jobs (job 1 twice once it was claimed again), whose reply could not be handed
    to them, so the batch's task failed and its other jobs waited for ever (until their
    timeout). Short leases: what the ended loop's worker held runs again soon."""
    q = JobQueue(
        "bgone",
        redis=redis_url,
        prefix=prefix,
        worker={"scheduler": False},
        settings={"lock_duration": 1000, "max_stalled_interval": 300},
    )
    calls = _batching(q, size=3, min_size=3)

    loop = asyncio.new_event_loop()
    first_id = loop.run_until_complete(_one_waiting_in_its_batch(q))
    left = asyncio.all_tasks(loop)
    loop.close()  # without close() and without cancelling the worker's tasks

    async def second() -> list[Any]:
        await q.close()  # forgets the worker of the ended loop (README)
        try:
            await q.start()
            ids = [first_id, *await q.add_jobs([("j", 2), ("j", 3)])]
            return [
                (await wait_for_status(q, i, JobStatus.COMPLETED, timeout=8)).result for i in ids
            ]
        finally:
            await q.close()

    try:
        assert asyncio.run(second()) == [1, 2, 3]
        assert all(len(set(c)) == len(c) for c in calls), calls  # no job twice in a batch
        assert sorted(x for c in calls for x in c) == [1, 2, 3]
    finally:
        _end_tasks_of_a_closed_loop(left)


def _end_tasks_of_a_closed_loop(tasks: set[asyncio.Task[Any]]) -> None:
    """Close the coroutines of tasks a closed loop left behind, here and now: left to
    the garbage collector, they would end at a random point of a later test (CPython
    3.11 can then fail whatever it was compiling)."""
    logging.disable(logging.CRITICAL)
    try:
        for task in tasks:
            with contextlib.suppress(BaseException):
                task.get_coro().close()
            task._log_destroy_pending = False  # type: ignore[attr-defined]
        tasks.clear()
        gc.collect()
    finally:
        logging.disable(logging.NOTSET)


async def test_a_batch_waits_its_own_max_wait_after_every_job_of_the_last_left(
    make_queue: QueueFactory,
) -> None:
    q = make_queue(worker={"concurrency": 10, "scheduler": False}, retry={"max_attempts": 1})
    ran: list[tuple[float, list[Any]]] = []

    @q.process_batch("j", size=5, min_size=3, max_wait=800)
    async def handle(jobs: list[Any]) -> None:
        ran.append((time.monotonic(), [j.data for j in jobs]))

    await q.start()
    t0 = time.monotonic()
    short = await q.add_job("j", "short", timeout=100)  # leaves its batch by its timeout
    await wait_for_status(q, short, JobStatus.DLQ, timeout=3)
    await asyncio.sleep(max(0.0, 0.4 - (time.monotonic() - t0)))
    added = time.monotonic()
    late = await q.add_job("j", "late")
    await wait_for_status(q, late, JobStatus.COMPLETED, timeout=5)
    at, data = ran[0]
    assert data == ["late"]
    # Its batch started with it: max_wait counts from its arrival (before, it was sent
    # at the max_wait of the batch the timed-out job had left, about 0.4 s after it).
    assert at - added >= 0.7, at - added


async def test_a_batch_function_returning_an_awaitable_is_awaited(
    make_queue: QueueFactory,
) -> None:
    q = make_queue(worker={"concurrency": 10, "scheduler": False}, retry={"max_attempts": 1})

    def traced(fn: Any) -> Any:  # a plain decorator around an async def
        @functools.wraps(fn)
        def wrapper(*args: Any) -> Any:
            return fn(*args)

        return wrapper

    @q.process_batch("double", size=3)
    @traced
    async def double(jobs: list[Any]) -> list[int]:
        return [j.data * 2 for j in jobs]

    async def triple(jobs: list[Any]) -> list[int]:
        return [j.data * 3 for j in jobs]

    q.process_batch("triple", lambda jobs: triple(jobs), size=3)
    ids = await q.add_jobs([("double", 1), ("double", 2), ("triple", 3)])
    await q.start()
    results = [(await wait_for_status(q, i, JobStatus.COMPLETED, JobStatus.DLQ)) for i in ids]
    assert [(r.status, r.result) for r in results] == [(JobStatus.COMPLETED, n) for n in (2, 4, 9)]


def test_batch_options_refuse_async_generators_and_huge_sizes() -> None:
    q = JobQueue("bopts")

    async def gen(jobs: list[Any]) -> Any:
        yield [None] * len(jobs)

    async def fn(jobs: list[Any]) -> None:
        return None

    with pytest.raises(ConfigurationError, match="async generator"):
        q.process_batch("g", gen, size=3)
    for size in (2**100, 10_001):
        with pytest.raises(
            ConfigurationError, match=r"batch size must be an int >= 1 and <= 10000"
        ):
            q.process_batch("x", fn, size=size)
    with pytest.raises(ConfigurationError, match=r"min_size must be .* got 0"):
        from kitium_queue.features.batches import set_batch_defaults

        set_batch_defaults(q, size=3, min_size=0)
    q.process_batch("x", fn, size=10_000)  # the largest concurrency
    asyncio.run(q.close())


# ------------------------------------------------------------------------ compression
@pytest.mark.parametrize("algorithm", ["zlib", "zstd"])
async def test_a_value_above_the_codecs_max_size_is_stored_as_it_is(
    make_queue: QueueFactory, algorithm: str
) -> None:
    codec = CompressionCodec(algorithm=algorithm, max_size=100_000)
    big = b'"' + b"a" * 150_000 + b'"'
    assert codec.encode(big) is big and codec.decode(big) == big
    small = b'"' + b"a" * 50_000 + b'"'
    assert codec.encode(small).startswith(MAGIC)  # within max_size: compressed
    q = make_queue(codecs=[codec], worker={"scheduler": False}, retry={"max_attempts": 1})
    seen: list[int] = []

    @q.process("x")
    async def handle(job: Any) -> str:
        seen.append(len(job.data))
        return "b" * 150_000

    jid = await q.add_job("x", "a" * 150_000)
    await q.start()
    info = await wait_for_status(q, jid, JobStatus.COMPLETED, JobStatus.DLQ)
    # Before: accepted, then dead-lettered as "undecodable payload".
    assert (info.status, info.failed_reason) == (JobStatus.COMPLETED, None)
    assert seen == [150_000] and info.result == "b" * 150_000


# --------------------------------------------------------------- event-stream rewrite
@pytest.mark.parametrize("at", ["first", "last"])
def test_a_rewrite_that_lost_its_lease_swaps_nothing(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch, at: str
) -> None:
    """Rewrite A stalls past its lease inside its ``drop``; meanwhile rewrite B (another
    erasure) takes the lease, drops the ``secret`` entries and swaps. A must not swap
    its own copy afterwards: the secrets would come back and entries would be lost.
    ``at``: A stalls on its first entry (caught when it renews) or on its last (caught
    by the swap itself)."""
    monkeypatch.setattr(stream, "_LEASE_MS", 300)
    total = 32

    def rewrite_b() -> None:
        async def run() -> None:
            qb = JobQueue("rw", redis=redis_url, prefix=prefix)
            try:
                assert await stream.rewrite_events(qb, drop=lambda f: f[b"who"] == b"secret") == 11
            finally:
                await qb.close()

        asyncio.run(run())

    async def main() -> None:
        q = JobQueue("rw", redis=redis_url, prefix=prefix)
        try:
            client = await q.client()
            for i in range(total):
                who = "secret" if i % 3 == 0 else "other"
                await client.xadd(q.keys.events, {"event": "x", "who": who, "i": str(i)})
            # A slow rewrite that keeps its lease alive (renewed while it copies) ends.
            seen: list[bytes] = []

            def slow(fields: Any) -> bool:
                seen.append(fields[b"i"])
                if len(seen) % 5 == 1:
                    time.sleep(0.12)
                return False

            assert await stream.rewrite_events(q, drop=slow, page=5) == 0
            assert len(seen) == total and await client.xlen(q.keys.events) == total

            calls: list[int] = []

            def stalling(fields: Any) -> bool:
                calls.append(1)
                if len(calls) == (1 if at == "first" else total):
                    time.sleep(0.5)  # past A's lease
                    b = threading.Thread(target=rewrite_b)
                    b.start()
                    b.join()
                return False

            with pytest.raises(ConfigurationError, match="lost its lease"):
                await stream.rewrite_events(q, drop=stalling, page=5)
            rows = await client.xrange(q.keys.events)
            kept = [int(f[b"i"]) for _, f in rows]
            assert kept == [i for i in range(total) if i % 3]  # B's result, untouched
            # A next rewrite starts from a clean copy.
            assert await stream.rewrite_events(q) == 0
            assert await client.xlen(q.keys.events) == len(kept)
            assert not await client.exists(q.keys.events + ":rewrite")
        finally:
            await q.close()

    asyncio.run(main())
