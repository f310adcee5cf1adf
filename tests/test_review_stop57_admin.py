"""The job lifecycle's admin commands while workers run: bulk retries and DLQ replays that
must move each job once (admin.py ``_moved``, lua/lib_requeue.lua ``requeue_upto``)."""

from __future__ import annotations

import gc
import warnings
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from helpers import QueueFactory, wait_until
from kitium_queue import JobQueue
from kitium_queue import admin as admin_mod


@pytest.fixture
async def queues(redis_url: str, prefix: str) -> AsyncIterator[QueueFactory]:
    factory = QueueFactory(redis_url, prefix)
    yield factory
    await factory.aclose()


def _settle_after(queue: JobQueue, script: str) -> None:
    """After each call of ``script``, wait until the worker ran every job it moved: a fast
    fleet keeps up with a bulk command's script calls (each one is 1000 jobs)."""
    real = queue.admin.ctx.run

    async def run(name: str, args: Any = (), *rest: Any, **kw: Any) -> Any:
        out = await real(name, args, *rest, **kw)
        if name == script:

            async def idle() -> bool:
                s = await queue.get_stats()
                return s.waiting == 0 and s.active == 0 and s.delayed == 0

            await wait_until(idle, 30, interval=0.02)
        return out

    queue.admin.ctx.run = run  # type: ignore[method-assign]


# ------------------------------------------------------------------ bulk moves: each job once
@pytest.mark.redis_only
async def test_bulk_retry_of_completed_jobs_moves_each_job_once(
    queues: QueueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: each script call read the oldest entries of the set again, and the jobs an
    earlier call moved were there again once their new run completed: with a limit above
    the set's size, ``bulk_retry("completed", limit=40)`` of 5 jobs ran them 7 to 11
    times each and returned 40 (with workers that keep up, it went on up to the limit)."""
    monkeypatch.setattr(admin_mod, "ADMIN_BATCH", 2)
    q = queues("bulk")
    runs: Counter[str] = Counter()

    @q.process("n")
    async def n(job: Any) -> None:
        runs[job.id] += 1

    ids = [await q.add_job("n", i) for i in range(5)]
    await q.start(concurrency=5)
    await wait_until(lambda: sum(runs.values()) == 5, 30)
    await wait_until(lambda: _completed(q, 5), 30)
    _settle_after(q, "retry")
    assert await q.bulk_retry("completed", limit=40) == 5
    assert dict(runs) == {i: 2 for i in ids}
    assert (await q.get_stats()).completed == 5


async def _completed(q: JobQueue, n: int) -> bool:
    return (await q.get_stats()).completed == n


@pytest.mark.redis_only
async def test_replay_dlq_replays_each_job_once_when_it_fails_again(
    queues: QueueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: a replayed job that failed again was dead-lettered after the entries not
    replayed yet, and the next script call of the same ``replay_dlq`` replayed it again."""
    monkeypatch.setattr(admin_mod, "ADMIN_BATCH", 2)
    q = queues("dlq", retry={"max_attempts": 1})
    runs: Counter[str] = Counter()

    @q.process("n")
    async def n(job: Any) -> None:
        runs[job.id] += 1
        raise RuntimeError("still broken")

    ids = [await q.add_job("n", i) for i in range(5)]
    await q.start(concurrency=5)
    await wait_until(lambda: _dlq(q, 5), 30)
    _settle_after(q, "replay")
    assert await q.replay_dlq(limit=100) == 5
    assert dict(runs) == {i: 2 for i in ids}
    assert (await q.get_stats()).dlq == 5


async def _dlq(q: JobQueue, n: int) -> bool:
    return (await q.get_stats()).dlq == n


@pytest.mark.redis_only
async def test_bulk_retry_of_failed_jobs_moves_each_job_once(
    queues: QueueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admin_mod, "ADMIN_BATCH", 3)
    q = queues("failed", retry={"max_attempts": 1}, dlq={"enabled": False})
    runs: Counter[str] = Counter()

    @q.process("n")
    async def n(job: Any) -> None:
        runs[job.id] += 1
        raise RuntimeError("still broken")

    ids = [await q.add_job("n", i) for i in range(7)]
    await q.start(concurrency=7)
    await wait_until(lambda: _failed(q, 7), 30)
    _settle_after(q, "retry")
    assert await q.bulk_retry("failed", limit=10**6) == 7
    assert dict(runs) == {i: 2 for i in ids}


async def _failed(q: JobQueue, n: int) -> bool:
    return (await q.get_stats()).failed == n


# ------------------------------------------------------------------ custom backoff
@pytest.mark.redis_only
async def test_an_async_backoff_strategy_keeps_the_jobs_retries(queues: QueueFactory) -> None:
    """Before: the strategy's coroutine went to ``float()``, the TypeError failed the job
    for good at its first failure (attempts=3), and the coroutine was never awaited (a
    RuntimeWarning). Now it is retried with the default backoff, and the reason says why,
    as for a strategy the worker lacks."""
    q = queues("backoff")
    called: list[int] = []

    async def later(attempts: int, error: BaseException, job: Any) -> int:
        called.append(attempts)
        return 10

    q.backoff_strategies["later"] = later

    @q.process("n")
    async def n(job: Any) -> None:
        raise RuntimeError("flaky")

    jid = await q.add_job("n", 1, attempts=3, backoff={"type": "custom", "strategy": "later"})
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        await q.start()

        async def retrying() -> Any:
            info = await q.get_job_status(jid)
            return info if info is not None and info.failed_reason else None

        info = await wait_until(retrying, 30)
        await q.worker.stop(timeout_ms=500)  # type: ignore[union-attr]
        gc.collect()
    assert info.status in ("delayed", "waiting", "active"), info.status
    assert "async def" in info.failed_reason and "default exponential" in info.failed_reason
    assert called == []  # the coroutine was closed, never run


def test_a_backoff_strategy_that_is_not_callable_is_said_as_such() -> None:
    from kitium_queue.backoff import UnknownStrategyError, retry_delay
    from kitium_queue.options import BackoffOptions, Policy

    policy = Policy(backoff=BackoffOptions(type="custom", strategy="s"))
    with pytest.raises(UnknownStrategyError, match="registered as a int, not a function"):
        retry_delay(policy, 1, RuntimeError(), None, {"s": 5})  # type: ignore[dict-item]
