"""Partitioned queues' add-time confirmation of the partition count, ``close()`` from
another event loop that closes meanwhile, and the process pool's close
(docs/scale-out.md, "Changing the partition count"; lifecycle.closed_in; procpool.py)."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from kitium_queue import (
    ConfigurationError,
    ConnectionUnavailableError,
    JobQueue,
    PartitionedQueue,
    SyncPartitionedQueue,
)
from kitium_queue.features.partitioncount import CountRecord
from kitium_queue.procpool import ProcessPool


def _aged(record: CountRecord, seconds: float) -> None:
    """The last confirmation ``seconds`` ago (the process paused, its loop blocked)."""
    mono, wall = record._heard
    record._heard = (mono - seconds, wall - seconds)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The record's script calls, each held 0.3 s (a slow Redis at the 20 s mark)."""
    made: list[int] = []
    real = CountRecord._call

    async def slow(self: CountRecord, *args: Any, **kwargs: Any) -> list[str]:
        made.append(1)
        await asyncio.sleep(0.3)
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(CountRecord, "_call", slow)
    return made


# ------------------------------------------------------------------ one call for a burst
@pytest.mark.redis_only
async def test_a_burst_of_adds_past_the_trusted_window_makes_one_call(
    redis_url: str, prefix: str, calls: list[int]
) -> None:
    """Before: each of the 50 adds made its own call to the record (50 round trips to a
    Redis that was slow already)."""
    async with PartitionedQueue("orders", partitions=3, redis=redis_url, prefix=prefix) as q:
        await q.get_stats()
        calls.clear()
        _aged(q.count_record, 21)
        await asyncio.gather(*(q.add_job("n", i) for i in range(40)), q.add_jobs([("n", "b")]))
        assert len(calls) == 1
        assert (await q.get_stats()).waiting == 41
        assert q.count_record.current()


@pytest.mark.redis_only
def test_threads_of_a_blocking_client_share_one_call(
    redis_url: str, prefix: str, calls: list[int]
) -> None:
    with SyncPartitionedQueue("orders", partitions=3, redis=redis_url, prefix=prefix) as sq:
        sq.get_stats()
        calls.clear()
        _aged(sq.queue.count_record, 21)
        start = threading.Barrier(6)
        errors: list[BaseException] = []

        def add(i: int) -> None:
            start.wait(10)
            try:
                sq.add_job("n", i)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=add, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == []
        assert len(calls) == 1
        assert sq.get_stats().waiting == 6


# ------------------------------------------------------------------ Redis away
@pytest.mark.redis_only
async def test_redis_away_past_the_stale_bound_is_a_connection_error(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: ConfigurationError (a ValueError: the settings are wrong, do not retry)
    for what is a connection failure that ends once Redis answers again."""
    async with PartitionedQueue("orders", partitions=2, redis=redis_url, prefix=prefix) as q:
        await q.get_stats()
        real = CountRecord._call

        async def away(self: CountRecord, *args: Any, **kwargs: Any) -> list[str]:
            raise redis.exceptions.ConnectionError("Connection reset by peer")

        monkeypatch.setattr(CountRecord, "_call", away)
        _aged(q.count_record, 25)  # within the stale bound: the add goes on
        await q.add_job("n", 1)
        _aged(q.count_record, 10)  # 35 s
        with pytest.raises(ConnectionUnavailableError, match="did not answer") as caught:
            await q.add_job("n", 2)
        assert not isinstance(caught.value, ConfigurationError)
        assert isinstance(caught.value, ConnectionError)
        assert "Connection reset by peer" in str(caught.value)
        monkeypatch.setattr(CountRecord, "_call", real)  # Redis answers again
        await q.add_job("n", 3)
        assert (await q.get_stats()).waiting == 2


# ------------------------------------------------------------------ close() from another loop
@pytest.fixture
def ending_loop() -> Iterator[tuple[asyncio.AbstractEventLoop, threading.Event]]:
    """A loop running in another thread; set the event and it stops (at once, what is
    scheduled on it left undone) and is closed, as an ``asyncio.run`` that ends."""
    loop = asyncio.new_event_loop()
    stop = threading.Event()

    def run() -> None:
        loop.run_forever()
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield loop, stop
    stop.set()
    if loop.is_running():
        loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    # The tasks the closed loop left pending are destroyed now, within the test, not
    # at some later collection.
    gc.collect()


@pytest.mark.redis_only
@pytest.mark.parametrize("kind", ["partitioned", "plain"])
async def test_close_returns_when_the_workers_loop_closes_meanwhile(
    redis_url: str,
    prefix: str,
    kind: str,
    ending_loop: tuple[asyncio.AbstractEventLoop, threading.Event],
) -> None:
    """close() awaited here while the workers' loop (another thread's) ends before it ran
    the close there. Before: close() waited for ever (the close's task was never run)."""
    loop, stop = ending_loop
    q: Any = (
        PartitionedQueue("orders", partitions=2, redis=redis_url, prefix=prefix)
        if kind == "partitioned"
        else JobQueue("orders", redis=redis_url, prefix=prefix)
    )
    q.process("n", lambda job: None)
    await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(q.start(), loop))

    def busy_then_stop() -> None:  # what close() schedules there comes after: never run
        stop.wait(10)
        loop.stop()

    loop.call_soon_threadsafe(busy_then_stop)
    closing = asyncio.ensure_future(q.close())
    await asyncio.sleep(0.3)
    assert not closing.done()
    stop.set()
    await asyncio.wait_for(closing, 10)
    assert loop.is_closed()
    if kind == "partitioned":
        assert not q.is_worker_running()
    else:
        assert q.lifecycle.worker is None  # forgotten


# ------------------------------------------------------------------ the process pool
async def test_pool_close_kills_its_idle_children_at_once() -> None:
    """Before: one after the other, each up to 5 s (a child in uninterruptible sleep):
    32 of them, 160 s."""
    live = most = 0

    class Idle:
        async def kill(self) -> None:
            nonlocal live, most
            live += 1
            most = max(most, live)
            await asyncio.sleep(0.05)
            live -= 1

    pool = ProcessPool(8)
    pool._idle = [Idle() for _ in range(8)]  # type: ignore[misc]
    await pool.close()
    assert most == 8 and live == 0 and pool._idle == []
