"""More calls at once than the pool has connections: they wait their turn instead of
failing with redis-py's ``MaxConnectionsError`` ("Too many connections"), from the
event loop and from threads; a pool that stays exhausted fails with a message that says
what to change; a caller that gives up passes its turn on; a Redis restart in the middle
of such a burst strands no caller (``kitium_queue.pools``)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError

import kitium_queue.pools as pools
from _redis import RedisServer
from helpers import QueueFactory
from kitium_queue import JobQueue, SyncJobQueue
from kitium_queue.pools import CheckedPool


def _mixed_calls(q: JobQueue, n: int) -> list[Any]:
    """``n`` calls of four kinds: a batched add, a script, plain commands, a pipeline."""
    kinds = (
        lambda i: q.add_job("t", {"i": i}),
        lambda i: q.get_stats(),
        lambda i: q.get_job_detail(f"missing-{i}"),
        lambda i: q.get_job_status(f"missing-{i}"),
    )
    return [kinds[i % len(kinds)](i) for i in range(n)]


async def test_gather_beyond_the_default_pool_waits_instead_of_failing(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("wide")  # on a redis-server and on memory:// (its pool is redis-py's)
    pool = (await q.client()).connection_pool
    assert isinstance(pool, CheckedPool) and pool.max_connections == 100
    replies = await asyncio.gather(*_mixed_calls(q, 1200))
    assert sum(1 for r in replies if isinstance(r, str)) == 300  # the 300 job ids
    assert (await q.get_stats()).waiting == 300


async def test_a_small_pool_serves_a_large_burst_of_every_kind_of_call(
    redis_url: str, prefix: str
) -> None:
    q = JobQueue("narrow", redis=f"{redis_url}?max_connections=3", prefix=prefix)
    try:
        pool = (await q.client()).connection_pool
        most = 0

        async def watch() -> None:
            nonlocal most
            while True:
                most = max(most, len(pool._in_use_connections))
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        replies = await asyncio.gather(*_mixed_calls(q, 400))
        watcher.cancel()
        assert sum(1 for r in replies if isinstance(r, str)) == 100
        assert 1 <= most <= 3
        assert (await q.get_stats()).waiting == 100
    finally:
        await q.close()


@contextlib.asynccontextmanager
async def _one_busy_connection(
    redis_url: str, prefix: str, wait_s: float, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[JobQueue, Any, Any]]:
    """A queue whose pool holds one connection, checked out: (queue, pool, connection)."""
    monkeypatch.setattr(pools, "POOL_WAIT_S", wait_s)
    q = JobQueue("one", redis=f"{redis_url}?max_connections=1", prefix=prefix)
    try:
        pool = (await q.client()).connection_pool
        yield q, pool, await pool.get_connection()
        assert not pools.waiters_of(pool)
    finally:
        await q.close()


async def test_an_exhausted_pool_fails_after_the_wait_with_what_to_change(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _one_busy_connection(redis_url, prefix, 0.3, monkeypatch) as (q, pool, held):
        with pytest.raises(MaxConnectionsError) as info:
            await q.get_job_detail("x")
        assert "all 1 connections" in str(info.value)
        assert "max_connections" in str(info.value)
        await pool.release(held)
        assert await q.get_job_detail("x") is None  # served once one is free


async def test_a_caller_cancelled_after_its_turn_came_passes_the_turn_on(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _one_busy_connection(redis_url, prefix, 5.0, monkeypatch) as (q, pool, held):
        first = asyncio.create_task(q.get_job_status("a"))
        second = asyncio.create_task(q.get_job_status("b"))
        while len(pools.waiters_of(pool)) < 2:
            await asyncio.sleep(0)
        await pool.release(held)  # wakes the first in line ...
        first.cancel()  # ... which is cancelled before it takes the connection
        with pytest.raises(asyncio.CancelledError):
            await first
        # Without the hand-over the second would wait out POOL_WAIT_S and raise.
        assert await second is None


def test_threads_beyond_the_pool_wait_their_turn(redis_url: str, prefix: str) -> None:
    q = SyncJobQueue("threads", redis=f"{redis_url}?max_connections=3", prefix=prefix)
    errors: list[BaseException] = []
    start = threading.Barrier(40)

    def add(i: int) -> None:
        start.wait()
        try:
            for k in range(5):
                q.add_job("t", {"i": i, "k": k})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(40)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert q.get_stats().waiting == 200
    finally:
        q.close()


async def test_a_restart_in_the_middle_of_a_burst_strands_no_caller(prefix: str) -> None:
    """Chaos: Redis restarts while 600 calls queue for 4 connections. Each call ends,
    served or with a connection error (none waits for ever, none reports a full pool),
    and once Redis is back a burst is served whole."""
    with RedisServer() as server:
        q = JobQueue("restart", redis=f"{server.url}?max_connections=4", prefix=prefix)
        try:
            await q.get_stats()
            calls = [asyncio.ensure_future(c) for c in _mixed_calls(q, 600)]
            await asyncio.sleep(0)
            await asyncio.to_thread(server.restart)
            done, pending = await asyncio.wait(calls, timeout=60)
            assert not pending
            outcomes = [c.exception() for c in done]
            kinds = {type(e).__name__ for e in outcomes if e is not None}
            assert all(
                e is None or isinstance(e, (RedisConnectionError, ConnectionError, OSError))
                for e in outcomes
            ), kinds
            assert not any(isinstance(e, MaxConnectionsError) for e in outcomes), kinds
            pool = (await q.client()).connection_pool
            assert not pools.waiters_of(pool)
            replies = await asyncio.gather(*_mixed_calls(q, 400))
            assert sum(1 for r in replies if isinstance(r, str)) == 100
        finally:
            await q.close()


async def test_memory_calls_give_the_event_loop_its_turn() -> None:
    """A ``memory://`` reply is there at once; each call must still suspend, as a socket
    read does, or a loop of awaited adds starves every other task of its loop (it did on
    Python 3.13: one turn in 2,000 adds, and a region's lease ran out meanwhile)."""
    q = JobQueue("turns")  # memory://
    turns = 0
    stop = False

    async def other_task() -> None:
        nonlocal turns
        while not stop:
            turns += 1
            await asyncio.sleep(0)

    task = asyncio.ensure_future(other_task())
    await asyncio.sleep(0)
    try:
        for i in range(200):
            await q.add_job("n", i)
    finally:
        stop = True
        await task
        await q.close()
    assert turns >= 200, turns


async def test_a_memory_call_cancelled_mid_reply_leaves_the_connection_in_step() -> None:
    """The turn given at each ``memory://`` reply comes after the reply is taken: a call
    cancelled at that turn must not leave its reply unread for the next command on the
    connection. Before, it did (with redis-py 8.1, which does not drop a connection
    whose call was cancelled: about 280 of 600 calls here, and a region's
    replication once read another call's NOSCRIPT)."""
    q = JobQueue("in-step")  # memory://
    client = await q.client()
    wrong = 0
    try:
        await client.set("k1", "one")
        await client.set("k2", "two")
        for i in range(300):  # cancelled at each point of the call in turn
            call = asyncio.ensure_future(client.get("k1"))
            for _ in range(i % 6):
                await asyncio.sleep(0)
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await call
            wrong += await client.get("k2") != b"two"
        for i in range(300):  # and by a deadline, as the regions' calls are
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(client.get("k1"), 0.00001 * (i % 10))
            wrong += await client.get("k2") != b"two"
    finally:
        await q.close()
    assert wrong == 0
