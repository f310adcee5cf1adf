"""Redis going away and coming back (DESIGN.md §2 "Reconnection", §6 "No job lost").

Each test runs its own durable ``redis-server`` (``--appendonly yes --appendfsync always``),
SIGKILLs it mid-run and restarts it on the same port from its AOF, while a worker process
keeps running. The worker must never exit, must reconnect by itself, must process jobs
added after the restart, and nothing acknowledged before the kill may be lost.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from _redis import RedisServer, free_port
from kitium_queue import ConnectionUnavailableError, JobQueue, JobStatus
from workers.harness import WorkerPool, starts, wait_for

QUEUE = "reconnect"


@pytest.fixture
def durable() -> Iterator[RedisServer]:
    srv = RedisServer("--appendonly", "yes", "--appendfsync", "always").start()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def pool(tmp_path: Path, durable: RedisServer, prefix: str) -> Iterator[WorkerPool]:
    p = WorkerPool(tmp_path, url=durable.url, prefix=prefix, queue=QUEUE)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
async def producer(durable: RedisServer, prefix: str) -> AsyncIterator[JobQueue]:
    q = JobQueue(QUEUE, redis=durable.url, prefix=prefix)
    try:
        yield q
    finally:
        await q.close()


async def _poll(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = await predicate()
            if value:
                return value
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:  # coming back
            last_error = exc
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f} s waiting for {what} (last error: {last_error})"
            )
        await asyncio.sleep(0.02)


def _outage(srv: RedisServer, worker: Any, seconds: float) -> tuple[float, float]:
    """SIGKILL Redis, keep it down for ``seconds`` while checking the worker stays up,
    restart it from the AOF. Returns (kill time, back time)."""
    t_kill = time.time()
    srv.kill()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert worker.alive(), f"worker exited during the outage:\n{worker.stderr()[-3000:]}"
        time.sleep(0.05)
    srv.restart()
    return t_kill, time.time()


async def _states(q: JobQueue, ids: list[str]) -> dict[str, str]:
    client = await q.client()
    pipe = client.pipeline(transaction=False)
    for jid in ids:
        pipe.hget(q.keys.job(jid), "st")
    return {
        jid: (st or b"<missing>").decode()
        for jid, st in zip(ids, await pipe.execute(), strict=True)
    }


@pytest.mark.redis_only
async def test_worker_survives_redis_crash_and_restart(
    durable: RedisServer, pool: WorkerPool, producer: JobQueue
) -> None:
    worker = pool.start("w", lock_duration=5000, stalled_interval=500, concurrency=4)
    await asyncio.to_thread(worker.wait_ready)
    rnd = random.Random(3)
    opts = {"remove_on_complete": False}
    before = await producer.add_jobs(
        [("work", {"ms": rnd.randint(20, 80)}, opts) for _ in range(100)]
    )
    client = await producer.client()

    async def mid_run() -> bool:
        return await client.zcard(producer.keys.completed) >= 30 and bool(worker.running_jobs())

    await _poll(mid_run, 30, "the worker to be mid-run")
    acknowledged = {m.decode() for m in await client.zrange(producer.keys.completed, 0, -1)}
    running_at_kill = worker.running_jobs()

    t_kill, t_back = await asyncio.to_thread(_outage, durable, worker, 1.5)

    # Everything acknowledged before the crash survived it (appendfsync always).
    states = await _poll(lambda: _states(producer, before), 10, "Redis to answer again")
    assert all(states[j] == "completed" for j in acknowledged), "acknowledged outcome lost"
    assert all(states[j] != "<missing>" for j in before), "acknowledged enqueue lost"

    # Jobs added after the restart are processed by the same, still running worker.
    after = await producer.add_jobs([("work", {"ms": 20}, opts) for _ in range(50)])
    everything = before + after

    async def all_done() -> bool:
        return int(await client.zcard(producer.keys.completed)) == len(everything)

    await _poll(all_done, 30, "all jobs to complete after the restart")
    assert worker.alive()
    final = await _states(producer, everything)
    assert set(final.values()) == {"completed"}
    for key in (
        producer.keys.wait,
        producer.keys.active,
        producer.keys.delayed,
        producer.keys.failed,
        producer.keys.dlq,
    ):
        assert await client.zcard(key) == 0

    lines = worker.lines()
    runs = starts(lines)
    assert all(runs[j] == 1 for j in acknowledged), "an acknowledged job ran again"
    twice = {j for j, n in runs.items() if n > 1}
    # Re-runs (at-least-once) can only hit jobs whose outcome was not yet recorded.
    assert twice <= set(before) - acknowledged
    resumed = min(ln.t for ln in lines if ln.event == "start" and ln.job_id in set(after))
    err = worker.stderr()
    assert "Redis unreachable" in err and "reachable again" in err

    # And it still shuts down cleanly.
    worker.signal(signal.SIGTERM)
    assert await asyncio.to_thread(worker.wait, 20) == 0
    print(
        f"\nRedis down {t_back - t_kill:.2f} s with {len(running_at_kill)} job(s) running; "
        f"first job added after the restart started {resumed - t_back:.2f} s after Redis was "
        f"back; {len(acknowledged)} acknowledged before the kill all kept; "
        f"{len(twice)} job(s) re-run"
    )


@pytest.mark.redis_only
async def test_outage_longer_than_lease_does_not_strand_or_dead_letter_running_job(
    durable: RedisServer, pool: WorkerPool, producer: JobQueue
) -> None:
    """Redis away for 2.5 x lock_duration while a job runs on the only worker.

    The job's lease expires during the outage. After the restart the worker may renew it
    or recover and re-run it (at-least-once), but the job must end completed, recorded
    once, and must not be dead-lettered as if it kept killing its worker.
    """
    lock_ms = 1000
    worker = pool.start(
        "w", lock_duration=lock_ms, stalled_interval=200, concurrency=2, max_stalled=2
    )
    await asyncio.to_thread(worker.wait_ready)
    jid = await producer.add_job("long", {"ms": 6000}, remove_on_complete=False)
    await asyncio.to_thread(
        wait_for, lambda: starts(worker.lines())[jid] >= 1, 20, what="the job to start"
    )

    await asyncio.to_thread(_outage, durable, worker, 2.5 * lock_ms / 1000)

    async def finished() -> bool:
        st = (await _states(producer, [jid]))[jid]
        return st in ("completed", "dlq", "failed")

    await _poll(finished, 40, "the job to finish")
    info = await producer.get_job_status(jid)
    assert info is not None
    assert info.status is JobStatus.COMPLETED, (info.status, info.failed_reason)
    client = await producer.client()
    raw = await client.xrange(producer.keys.events, "-", "+")
    completed = [f for _, f in raw if f[b"e"] == b"job-completed" and f[b"id"] == jid.encode()]
    assert len(completed) == 1
    assert worker.alive()
    assert await client.zcard(producer.keys.active) == 0
    runs = starts(worker.lines())[jid]
    print(f"\njob ran {runs} time(s), {info.stalls} stall(s) recorded")
    # Never two runs of the job at once in this worker after the restart settles.
    assert runs <= 2


@pytest.mark.redis_only
async def test_redis_unreachable_at_start_is_a_clear_error(tmp_path: Path, prefix: str) -> None:
    port = free_port()  # nothing listens here
    url = f"redis://127.0.0.1:{port}/0"
    q = JobQueue(QUEUE, redis=url, prefix=prefix)
    with pytest.raises(ConnectionUnavailableError) as info:
        await q.client()
    message = str(info.value)
    assert "cannot reach Redis" in message
    assert f"127.0.0.1:{port}" in message
    assert repr(QUEUE) in message
    assert isinstance(info.value, ConnectionError)  # catchable as the builtin too

    with pytest.raises(ConnectionUnavailableError):
        await q.add_job("a", {})
    with pytest.raises(ConnectionUnavailableError):
        await q.start()
    assert q.worker is None or not q.worker.running
    await asyncio.wait_for(q.close(), 10)  # closing after a failed start must not hang

    # A worker process started against an unreachable Redis exits non-zero and says why.
    p = WorkerPool(tmp_path, url=url, prefix=prefix, queue=QUEUE)
    try:
        w = p.start("w")
        rc = await asyncio.to_thread(w.wait, 30)
        assert rc != 0
        assert "cannot reach Redis" in w.stderr()
    finally:
        p.close()


@pytest.mark.redis_only
async def test_first_call_after_a_restart_succeeds(
    durable: RedisServer, producer: JobQueue
) -> None:
    # A connection left idle when Redis restarted is closed on the server side. The
    # script path notices (the event loop saw the EOF) and reconnects before sending,
    # so the first add_job after the restart succeeds instead of failing once.
    await producer.add_job("x", 1)
    await asyncio.to_thread(lambda: (durable.kill(), durable.restart()))
    await asyncio.sleep(0.1)  # the loop processes the closed socket
    jid = await producer.add_job("x", 2)
    info = await producer.get_job_status(jid)
    assert info is not None and info.data == 2


async def test_health_while_redis_is_down_still_knows_this_process_runs_a_worker(
    durable: RedisServer, producer: JobQueue
) -> None:
    """Redis unreachable: unhealthy, and ``worker_running`` still says that this
    process's worker runs (and retries); it used to say False whenever Redis was down."""
    producer.process("x", lambda job: None)
    await producer.start()
    try:
        assert (await producer.health_check()).worker_running is True
        await asyncio.to_thread(durable.kill)
        health = await producer.health_check()
        assert not health.healthy and health.error, health
        assert health.worker_running is True, health
    finally:
        await producer.worker.stop(timeout_ms=200)  # type: ignore[union-attr]
        await asyncio.to_thread(durable.restart)


async def test_a_call_that_cannot_reconnect_raises_connection_unavailable(
    durable: RedisServer, producer: JobQueue
) -> None:
    """Connected once, then Redis went away: a call whose connection cannot be opened
    again reached nothing, and raises ``ConnectionUnavailableError`` as the first
    connection does (it raised redis-py's bare ``ConnectionError``). It is still a
    redis-py ``ConnectionError`` too, for handlers written for that."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    await producer.add_job("x", 1)
    await asyncio.to_thread(durable.kill)
    try:
        for call in (lambda: producer.add_job("x", 2), producer.get_stats):
            with pytest.raises(ConnectionUnavailableError) as info:
                await call()
            assert isinstance(info.value, RedisConnectionError)
            assert "Nothing of this call reached Redis" in str(info.value)
    finally:
        await asyncio.to_thread(durable.restart)
    assert await producer.add_job("x", 3)  # the next call connects again
