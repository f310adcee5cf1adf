"""The partition-count record (``CountRecord``) on a cluster and over a queue's life:
close() from another loop, reuse in a second ``asyncio.run``, processes forked from one
that made the queue, queues dropped without close()."""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Iterator
from typing import Any

import pytest

from _cluster import LocalCluster, key_slot
from helpers import in_forked_child, wait_until
from kitium_queue import ConfigurationError, PartitionedQueue
from kitium_queue.features import partitioncount


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(masters=3, replicas=1) as c:
        yield c


@pytest.mark.redis_only
async def test_cluster_record_refusal_refresh_and_failover(
    cluster: LocalCluster, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(partitioncount, "_REFRESH_S", 0.2)
    old = PartitionedQueue("orders", partitions=6, redis=cluster.url, prefix=prefix)
    new = PartitionedQueue("orders", partitions=2, redis=cluster.url, prefix=prefix)
    try:
        await old.add_jobs([("n", i) for i in range(12)])
        slots = {key_slot(q.keys.wait) for q in old.queues}
        assert len({cluster.master_for_slot(s).port for s in slots}) == 3
        with pytest.raises(ConfigurationError, match=r"12 job\(s\)"):
            await new.get_stats()
        rec = old.count_record
        owner = cluster.master_for_key(rec.key)
        (replica,) = cluster.replicas_of(owner)
        cluster.failover_to(replica)
        await asyncio.to_thread(cluster.wait_master_change, owner, key_slot(rec.key))
        client = await old.queues[0].client()
        before = await client.zscore(rec.users_key, rec._token)
        await wait_until(lambda: _later(client, rec, before), 10)
        assert rec.moved is None
        await old.clear(force=True)
        await old.close()
        assert await client.zcard(rec.users_key) == 0
        assert (await new.get_stats()).waiting == 0
        assert cluster.crossslot_errors() == {}
    finally:
        await old.close()
        await new.close()


async def _later(client: Any, rec: Any, before: Any) -> bool:
    got = await client.zscore(rec.users_key, rec._token)
    return got is not None and got > before


@pytest.mark.redis_only
def test_count_released_in_another_loop_after_the_first_ended(redis_url: str, prefix: str) -> None:
    """Before: RuntimeError 'Event loop is closed' (the refresh task of the ended loop
    awaited in this one)."""
    pq = PartitionedQueue("orders", partitions=3, redis=redis_url, prefix=prefix)
    asyncio.run(pq.add_job("n", 1))
    rec = pq.count_record
    asyncio.run(rec.release())
    assert not rec.checked and rec._refresher is None


@pytest.mark.redis_only
def test_reused_in_a_second_loop_after_close(redis_url: str, prefix: str) -> None:
    """Checks at once (partitions connecting together) in a second ``asyncio.run``
    after close(): before, RuntimeError 'bound to a different event loop'."""
    import redis.asyncio as aioredis

    pq = PartitionedQueue("orders", partitions=4, redis=redis_url, prefix=prefix)

    async def use() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            rec = pq.count_record
            await asyncio.gather(rec.check(client), rec.check(client))
            await asyncio.gather(*(q.client() for q in pq.queues))
            assert (await pq.get_stats()).waiting == 0
            await pq.close()
        finally:
            await client.aclose()

    asyncio.run(use())
    asyncio.run(use())


@pytest.mark.redis_only
def test_processes_forked_from_one_queue_each_count(redis_url: str, prefix: str) -> None:
    """A queue made before fork: one child's close() withdrew the other's entry too
    (one token), and another count took over while that child still used it."""
    pq = PartitionedQueue("orders", partitions=3, redis=redis_url, prefix=prefix)

    def child(close: bool) -> str:
        async def run() -> str:
            await pq.get_stats()
            if close:
                await pq.close()
            return "ok"

        return asyncio.run(run())

    assert in_forked_child(lambda: child(close=False)) == "ok"  # still live: not closed
    assert in_forked_child(lambda: child(close=True)) == "ok"

    async def other() -> None:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(redis_url)
        try:
            assert await client.zcard(pq.count_record.users_key) == 1
        finally:
            await client.aclose()
        new = PartitionedQueue("orders", partitions=5, redis=redis_url, prefix=prefix)
        try:
            with pytest.raises(ConfigurationError, match=r"1 process\(es\) using 3"):
                await new.get_stats()
        finally:
            await new.close()

    asyncio.run(other())
    assert os.getpid()  # the parent goes on


@pytest.mark.redis_only
async def test_queues_dropped_without_close_are_freed(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One queue per request, never closed: before, each left a refresh task holding
    its client and its entry for ever (20 requests: 20 tasks, 20 entries, 20 clients)."""
    import weakref

    monkeypatch.setattr(partitioncount, "_REFRESH_S", 0.05)
    monkeypatch.setattr(partitioncount, "_STALE_MS", 500)
    made = []
    for i in range(5):
        pq = PartitionedQueue("orders", partitions=2, redis=redis_url, prefix=prefix)
        await pq.add_job("n", i)
        made.append(weakref.ref(pq.count_record))
        del pq
    users_key = f"{prefix}:{{orders#}}:partitions:users"

    def refreshing() -> int:
        return sum(t.get_coro().__name__ == "_refresh" for t in asyncio.all_tasks())  # type: ignore[union-attr]

    assert refreshing() >= 1  # each queue's, until it is collected

    def freed() -> bool:
        gc.collect()  # a record in a refresh call is collected after it
        return all(ref() is None for ref in made) and refreshing() == 0

    await wait_until(freed, 5)
    probe = PartitionedQueue("orders", partitions=2, redis=redis_url, prefix=prefix)
    try:
        client = await probe.queues[0].client()
        await asyncio.sleep(0.6)  # the dropped queues' entries go stale
        await probe.count_record._refreshed()
        assert await client.zcard(users_key) == 1  # the probe's own
    finally:
        await probe.close()
