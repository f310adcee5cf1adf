"""A queue on a Redis Cluster whose nodes all went away and came back (every node
stopped and restarted, as a whole-cluster restart does) reconnects as a queue on one
server does.

redis-py's Cluster client, once no node answers its topology refresh, raises
``RedisClusterUnreachableError``, which is no ``ConnectionError``: a worker took it for
a failed round (an ERROR "claim/finish round ... failed" per retry, ``queue_error``
hooks) instead of an outage (one warning, outcomes held, retried), and ``add_job`` /
``get_stats`` raised it bare where a single server's queue raises
``ConnectionUnavailableError``. One cluster (3 masters, persistent) serves the module.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis.exceptions import RedisClusterException

from _cluster import LocalCluster
from kitium_queue import ConnectionUnavailableError, JobQueue

WAIT_S = 60.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    durable = ("--appendonly", "yes", "--appendfsync", "always")
    with LocalCluster(masters=3, replicas=0, extra_args=durable) as c:
        yield c


def _stop_all(cluster: LocalCluster) -> None:
    for node in cluster.nodes:
        node.kill()


def _start_all(cluster: LocalCluster) -> None:
    for node in cluster.nodes:
        node.restart()
    cluster.wait_ok(timeout=WAIT_S)


async def _until(cond: Any, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not await cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def test_a_call_while_no_node_answers_is_connection_unavailable(
    cluster: LocalCluster, prefix: str
) -> None:
    q = JobQueue("allgone", redis=cluster.url, prefix=prefix)
    try:
        await q.add_job("x", {"n": 1})
        await asyncio.to_thread(_stop_all, cluster)
        try:
            for call in (lambda: q.add_job("x", {"n": 2}), q.get_stats):
                with pytest.raises(ConnectionUnavailableError) as info:
                    await call()
                msg = str(info.value)
                assert isinstance(info.value, RedisClusterException), msg
                assert "cannot reach any node of the Redis cluster" in msg, msg
                assert "Please provide" not in msg, msg
        finally:
            await asyncio.to_thread(_start_all, cluster)

        async def added() -> bool:  # the next call connects again
            try:
                await q.add_job("x", {"n": 3})
            except ConnectionUnavailableError:
                return False
            return True

        await _until(added, "an add once the nodes answer")
    finally:
        await q.close()


async def test_a_worker_takes_every_node_restarting_as_an_outage(
    cluster: LocalCluster, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    q = JobQueue("restarted", redis=cluster.url, prefix=prefix)
    runs: list[int] = []

    async def work(job: Any) -> int:
        runs.append(int(job.data["n"]))
        await asyncio.sleep(0.5)
        return 1

    q.process("w", work)
    try:
        for n in range(4):
            await q.add_job("w", {"n": n})
        caplog.set_level(logging.INFO, logger="kitium_queue")
        await q.start(concurrency=2)

        async def running() -> bool:
            return len(runs) >= 1

        await _until(running, "the first job to start")
        await asyncio.to_thread(_stop_all, cluster)
        try:

            async def said() -> bool:
                return any("Redis unreachable" in r.getMessage() for r in caplog.records)

            await _until(said, "the worker to report the outage")
            await asyncio.sleep(1.5)  # several rounds fail meanwhile
        finally:
            await asyncio.to_thread(_start_all, cluster)
        for n in range(4, 6):
            await q.add_job("w", {"n": n})

        async def drained() -> bool:
            try:
                stats = await q.get_stats()
            except ConnectionUnavailableError:
                return False
            return stats.completed == 6 and stats.waiting == 0 and stats.active == 0

        await _until(drained, "every job to complete")
        stats = await q.get_stats()
        assert stats.failed == 0 and stats.dlq == 0, stats
        assert sorted(set(runs)) == list(range(6)), runs
        failed_rounds = [
            r.getMessage() for r in caplog.records if "round on queue" in r.getMessage()
        ]
        assert failed_rounds == [], failed_rounds[:3]
        assert not any(
            r.levelno >= logging.ERROR and r.name.startswith("kitium_queue") for r in caplog.records
        ), [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR][:3]
    finally:
        await q.close()
