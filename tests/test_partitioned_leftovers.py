"""Partitioned queues: ``close()`` from another event loop than the queue's, the count
record's script through the script registry, and a process frozen past the record's
stale bound while another partition count was recorded (docs/scale-out.md, "Changing
the partition count")."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from kitium_queue import ConfigurationError, PartitionedQueue, SyncPartitionedQueue
from kitium_queue.features import partitioncount
from kitium_queue.features.partitioncount import CountRecord
from kitium_queue.keys import QueueKeys

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def pq(backend_url: str, prefix: str) -> AsyncIterator[Callable[..., PartitionedQueue]]:
    opened: list[PartitionedQueue] = []

    def open_(partitions: int) -> PartitionedQueue:
        opened.append(
            PartitionedQueue("orders", partitions=partitions, redis=backend_url, prefix=prefix)
        )
        return opened[-1]

    yield open_
    for q in opened:
        await q.close()


def _users(redis_url: str, prefix: str) -> int:
    with redis.Redis.from_url(redis_url) as r:
        return int(r.zcard(f"{prefix}:{{orders#}}:partitions:users"))


@pytest.fixture
def thread_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in a thread of its own (another thread's loop)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


# ------------------------------------------------------------------ close() from another loop
@pytest.mark.redis_only
def test_closed_in_a_second_asyncio_run(redis_url: str, prefix: str) -> None:
    """Before: RuntimeError 'Event loop is closed' (the shared client closed in the new
    loop), and the process's entry stayed in the record for the stale bound (30 s)."""
    q = PartitionedQueue("orders", partitions=3, redis=redis_url, prefix=prefix)
    asyncio.run(q.get_stats())
    assert _users(redis_url, prefix) == 1
    asyncio.run(q.close())
    assert _users(redis_url, prefix) == 0
    assert not q.count_record.checked

    async def other_count() -> None:  # no process uses 3 any more: 5 is recorded at once
        async with PartitionedQueue("orders", partitions=5, redis=redis_url, prefix=prefix) as five:
            assert (await five.get_stats()).waiting == 0

    asyncio.run(other_count())


@pytest.mark.redis_only
def test_closed_from_another_threads_loop(
    redis_url: str, prefix: str, thread_loop: asyncio.AbstractEventLoop
) -> None:
    """Used (with a worker) in a loop running in another thread, closed from this one:
    the workers stop in their loop, the entry is withdrawn, the connections closed.
    Before: RuntimeError (a Future attached to a different loop)."""
    q = PartitionedQueue("orders", partitions=3, redis=redis_url, prefix=prefix)
    done: list[str] = []
    q.process("n", lambda job: done.append(job.data))

    def there(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, thread_loop).result(30)

    there(q.start(concurrency=2))
    there(q.add_job("n", "a"))
    assert _users(redis_url, prefix) == 1
    asyncio.run(q.close())
    assert not q.is_worker_running()
    assert _users(redis_url, prefix) == 0
    pool = q.queues[0].ctx.connection.client().connection_pool  # the shared client's
    assert not any(c.is_connected for c in pool._available_connections)


@pytest.mark.redis_only
def test_producer_in_another_threads_loop_closed_from_here(
    redis_url: str, prefix: str, thread_loop: asyncio.AbstractEventLoop
) -> None:
    q = PartitionedQueue("orders", partitions=2, redis=redis_url, prefix=prefix)
    asyncio.run_coroutine_threadsafe(q.get_stats(), thread_loop).result(30)
    asyncio.run(q.close())
    assert _users(redis_url, prefix) == 0
    refresher = asyncio.run_coroutine_threadsafe(_refreshers(), thread_loop).result(30)
    assert refresher == 0  # the refresh was stopped in its own loop


async def _refreshers() -> int:
    await asyncio.sleep(0)
    return sum(t.get_coro().__name__ == "_refresh" for t in asyncio.all_tasks())  # type: ignore[union-attr]


# ------------------------------------------------------------------ the script registry
def _calls(r: redis.Redis, command: str) -> int:
    return int(r.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


@pytest.mark.redis_only
async def test_the_record_runs_by_sha_and_survives_script_flush(pq: Any, redis_url: str) -> None:
    """Before: every check and refresh sent the whole script with EVAL."""
    q = pq(3)
    await q.get_stats()
    record = q.count_record
    with redis.Redis.from_url(redis_url) as r:
        evals, shas = _calls(r, "eval"), _calls(r, "evalsha")
        for _ in range(3):
            assert await record._refreshed()
        assert _calls(r, "eval") == evals  # by SHA only
        assert _calls(r, "evalsha") >= shas + 3
        r.script_flush()
        assert await record._refreshed()  # NOSCRIPT: sent once more, cached again
        assert await record._refreshed()
        assert _calls(r, "eval") == evals + 1
    assert record.moved is None


# ------------------------------------------------------------------ a frozen process
def _frozen(q: PartitionedQueue, client: Any) -> Any:
    """What a process frozen past the stale bound finds when it resumes: its entry gone
    from the record, and its own clock gone on since it was last confirmed."""
    record = q.count_record
    mono, wall = record._heard
    stale = partitioncount._STALE_MS / 1000 + 1
    record._heard = (mono - stale, wall - stale)
    return client.zrem(record.users_key, record._token)


async def _held_by(q: PartitionedQueue) -> int:
    return sum([(await p.get_stats()).waiting for p in q.queues])


async def test_a_resumed_process_refuses_adds_once_another_count_was_recorded(pq: Any) -> None:
    """Before: the resumed process added the job to the layout of 4, which nobody reads
    (the count of 2 is recorded), until its next refresh (up to 10 s later)."""
    old = pq(4)
    await old.get_stats()
    await _frozen(old, await old.queues[0].client())
    new = pq(2)
    assert (await new.get_stats()).waiting == 0  # recorded: nobody used 4 any more
    both = r"Redis records 2 partitions, and this process uses 4"
    with pytest.raises(ConfigurationError, match=both):
        await old.add_job("n", 1)
    with pytest.raises(ConfigurationError, match=both):
        await old.add_jobs([("n", 2)])
    assert await _held_by(old) == 0  # nothing hidden in the old layout
    assert (await new.get_stats()).waiting == 0


async def test_a_resumed_process_takes_its_place_again_if_the_count_is_unchanged(
    pq: Any, caplog: pytest.LogCaptureFixture
) -> None:
    q = pq(4)
    await q.get_stats()
    client = await q.queues[0].client()
    await _frozen(q, client)
    with caplog.at_level(logging.WARNING, "kitium_queue"):
        await q.add_job("n", 1)
    record = q.count_record
    assert await client.zscore(record.users_key, record._token) is not None  # back at once
    assert "place taken again" in caplog.text
    assert record.moved is None and record.current()


async def test_adds_ask_redis_only_when_not_confirmed_lately(
    pq: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The normal path costs no call to the record per add (the refresh keeps it)."""
    q = pq(3)
    await q.get_stats()
    asked: list[int] = []
    real = CountRecord._refreshed

    async def counted(self: CountRecord) -> bool:
        asked.append(1)
        return await real(self)

    monkeypatch.setattr(CountRecord, "_refreshed", counted)
    for i in range(20):
        await q.add_job("n", i)
    await q.add_jobs([("n", i) for i in range(20)])
    assert asked == []
    mono, wall = q.count_record._heard
    q.count_record._heard = (mono - 25, wall - 25)  # past the 20 s trusted
    await q.add_job("n", "late")
    assert asked == [1]
    await q.add_job("n", "then")
    assert asked == [1]


@pytest.mark.redis_only
def test_the_blocking_client_refuses_too(redis_url: str, prefix: str) -> None:
    """SyncPartitionedQueue.add_job runs in the caller's thread: it asks first as well."""
    with SyncPartitionedQueue("orders", partitions=4, redis=redis_url, prefix=prefix) as sq:
        sq.get_stats()
        with redis.Redis.from_url(redis_url) as r:
            _frozen(sq.queue, r)

        async def record_two() -> None:
            async with PartitionedQueue(
                "orders", partitions=2, redis=redis_url, prefix=prefix
            ) as two:
                await two.get_stats()

        asyncio.run(record_two())
        with pytest.raises(ConfigurationError, match="Redis records 2 partitions"):
            sq.add_job("n", {})
        assert sq.get_stats().waiting == 0


_FROZEN_CHILD = """
import asyncio, sys
from kitium_queue import ConfigurationError, PartitionedQueue
from kitium_queue.features import partitioncount

partitioncount._STALE_MS = 1500  # forgotten 1.5 s after it was last heard of
partitioncount._REFRESH_S = 60.0  # no timed refresh during the test: the add must ask

async def main():
    url, prefix = sys.argv[1:3]
    q = PartitionedQueue("orders", partitions=4, redis=url, prefix=prefix)
    await q.get_stats()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    try:
        print("added", await q.add_job("n", 1), flush=True)
    except ConfigurationError as exc:
        print("refused", exc, flush=True)
    await q.close()

asyncio.run(main())
"""


@pytest.mark.redis_only
async def test_a_process_stopped_with_sigstop(
    redis_url: str, prefix: str, pq: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real freeze: the child is SIGSTOPped past the (shortened) stale bound, another
    count is recorded meanwhile, and its first add after SIGCONT is refused."""
    monkeypatch.setattr(partitioncount, "_STALE_MS", 1500)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_FROZEN_CHILD), redis_url, prefix],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert child.stdin is not None and child.stdout is not None
    try:
        assert (await asyncio.to_thread(child.stdout.readline)).strip() == "ready"
        os.kill(child.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(2.5)
            assert (await pq(2).get_stats()).waiting == 0  # the child is forgotten: 2 recorded
        finally:
            os.kill(child.pid, signal.SIGCONT)
        child.stdin.write("add\n")
        child.stdin.flush()
        said = (await asyncio.to_thread(child.stdout.readline)).strip()
        assert said.startswith("refused"), (said, child.stderr.read() if not said else "")
        assert "Redis records 2 partitions, and this process uses 4" in said
        await asyncio.to_thread(child.wait, 30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    with redis.Redis.from_url(redis_url) as r:  # the layout of 4, read as it is
        names = partitioncount.partition_names("orders", 4)
        assert sum(r.zcard(QueueKeys(n, prefix).wait) for n in names) == 0
