"""kitium-queue through Redis Sentinel (a primary, a replica and three sentinels on
loopback): every connection form, and workers that follow the primary through a
``SENTINEL FAILOVER`` and a SIGKILLed primary by themselves, losing no acknowledged
job beyond the replication window (see ``_failover``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio.sentinel import Sentinel

from _docs import run_doc_example
from _failover import LoadRun
from _sentinel import LocalSentinel
from helpers import wait_until
from kitium_queue import JobQueue


@pytest.fixture(scope="module")
def sentinel() -> Iterator[LocalSentinel]:
    with LocalSentinel() as s:
        yield s


async def _started_quickly(q: JobQueue) -> float:
    """Add a job to an idle worker and return how long it took to start. The idle pump
    sleeps up to 5 s, so a start well under that (half, leaving room for a loaded
    machine) proves the blocking wake-up works."""
    done = asyncio.Event()

    async def ping(job: Any) -> str:
        done.set()
        return "pong"

    q.process("ping", ping)
    await q.start(concurrency=2)
    await asyncio.sleep(0.3)  # idle: the worker now waits on its wake-up key
    t0 = time.monotonic()
    await q.add_job("ping")
    await asyncio.wait_for(done.wait(), timeout=2.5)
    return time.monotonic() - t0


async def _completed(q: JobQueue, n: int) -> bool:
    return (await q.get_stats()).completed == n


async def test_sentinel_url_dict_and_client_forms(sentinel: LocalSentinel, prefix: str) -> None:
    addrs = [f"127.0.0.1:{s.port}" for s in sentinel.sentinels]
    manager = Sentinel([("127.0.0.1", s.port) for s in sentinel.sentinels])
    client = manager.master_for(sentinel.service)
    forms: list[Any] = [
        sentinel.url,
        f"{sentinel.url}/0?socket_timeout=5",
        {"sentinels": addrs, "service_name": sentinel.service},
        client,
    ]
    try:
        for i, form in enumerate(forms):
            q = JobQueue(f"forms{i}", redis=form, prefix=prefix)
            try:
                assert await _started_quickly(q) < 2.5
                # The processor ran; its outcome is flushed a moment later.
                await wait_until(lambda q=q: _completed(q, 1), 5, message="the completion")
                assert (await q.health_check()).healthy
            finally:
                await q.close()
    finally:
        await client.aclose()
        await manager.aclose()


async def test_more_calls_at_once_than_the_pool_holds(sentinel: LocalSentinel, prefix: str) -> None:
    """The primary's pool (100 connections) queues calls beyond it instead of raising
    redis-py's MaxConnectionsError."""
    q = JobQueue("burst", redis=sentinel.url, prefix=prefix)
    try:
        await asyncio.gather(*(q.add_job("t") for _ in range(300)))
        stats = await asyncio.gather(*(q.get_stats() for _ in range(400)))
        details = await asyncio.gather(*(q.get_job_detail(f"m{i}") for i in range(400)))
        assert {s.waiting for s in stats} == {300} and details == [None] * 400
        assert (await q.get_stats()).waiting == 300
    finally:
        await q.close()


async def test_workers_follow_the_primary_through_failovers(prefix: str) -> None:
    with LocalSentinel() as s:
        q = JobQueue(
            "failover", redis=s.url, prefix=prefix,
            settings={"lock_duration": 1000, "max_stalled_count": 5},
        )  # fmt: skip
        try:
            async with LoadRun(q) as run:
                worker = q.worker
                await run.produce_for(1.0)

                # 1. SENTINEL FAILOVER: the replica is promoted, the old primary demoted
                #    (blocked pops get UNBLOCKED, writes get READONLY, then reconnect).
                old = s.primary()
                with run.window("SENTINEL FAILOVER"):
                    s.failover()
                    await asyncio.to_thread(s.wait_new_primary, old)
                await run.produce_for(1.0)
                await asyncio.to_thread(s.wait_synced)

                # 2. SIGKILL of the new primary: the sentinels promote the old one back.
                with run.window("SIGKILL"):
                    killed = s.kill_primary()
                    await asyncio.to_thread(s.wait_new_primary, killed)
                await run.produce_for(1.0)
                await run.produce_until(301)  # a real load, on any machine
            await run.settle()
            print(run.report())
            assert q.worker is worker and worker.running
            assert run.lost_outside_windows() == [], run.report()
            assert len(run.acked) > 300
            stats = await q.get_stats()
            assert (stats.waiting, stats.active) == (0, 0), (stats, run.report())
        finally:
            await q.close()


async def test_doc_example_runs(sentinel: LocalSentinel, tmp_path: Path) -> None:
    out = await asyncio.to_thread(
        run_doc_example, "sentinel", tmp_path, KQ_SENTINEL_URL=sentinel.url
    )
    assert out.strip() == "6"
