"""Redis under pressure: an evicting policy refused at connect, memory and persistence in
``health_check``, and a full Redis (``maxmemory`` with ``noeviction``) that refuses
writes with ``WriteRefusedError`` while every transition stays whole and the queue
drains once memory is freed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis

from _redis import RedisServer
from helpers import wait_until
from kitium_queue import ConfigurationError, JobQueue, WriteRefusedError

STATE_SETS = {
    "waiting": "wait",
    "active": "active",
    "delayed": "delayed",
    "completed": "completed",
    "failed": "failed",
    "dlq": "dlq",
}


async def test_an_evicting_policy_is_refused_unless_allowed(prefix: str) -> None:
    with RedisServer("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru") as srv:
        q = JobQueue("ev", redis=srv.url, prefix=prefix)
        with pytest.raises(ConfigurationError, match=r"allkeys-lru.*noeviction.*allow_eviction"):
            await q.add_job("n", 1)
        await q.close()
        ok = JobQueue("ev", redis=srv.url, prefix=prefix, settings={"allow_eviction": True})
        assert await ok.add_job("n", 1)
        health = await ok.health_check()
        assert health.memory is not None and health.memory.policy == "allkeys-lru"
        assert health.memory.maxmemory_bytes == 64 * 1024 * 1024
        await ok.close()
    with pytest.raises(ConfigurationError, match="allow_eviction must be True or False"):
        JobQueue("ev", settings={"allow_eviction": "yes"})


async def test_health_reports_memory_and_persistence(prefix: str) -> None:
    with RedisServer(
        "--appendonly", "yes", "--appendfsync", "always", "--maxmemory", "32mb"
    ) as srv:
        q = JobQueue("h", redis=srv.url, prefix=prefix)
        h = await q.health_check()
        assert h.healthy and h.memory is not None
        assert h.memory.persistence == "aof"  # INFO alone: AOF on, fsync not known
        h = await q.queries.health_check(lambda: False, server_config=True)
        assert h.memory is not None
        assert h.memory.persistence == "aof (appendfsync always)"
        assert h.memory.policy == "noeviction" and h.memory.used_bytes > 0
        assert h.memory.used_fraction is not None and 0 < h.memory.used_fraction < 1
        await q.close()
    mem = JobQueue("m")
    assert (await mem.health_check()).memory is None  # memory:// has no server


async def _consistent(client: aioredis.Redis, q: JobQueue) -> list[str]:
    """Every job hash's state matches the one set that holds it; returns problems."""
    problems: list[str] = []
    where: dict[str, str] = {}
    for st, attr in STATE_SETS.items():
        for jid in await client.zrange(getattr(q.keys, attr), 0, -1):
            j = jid.decode()
            if j in where:
                problems.append(f"{j} in {where[j]} and {st}")
            where[j] = st
    async for key in client.scan_iter(match=q.keys.job("*"), count=1000):
        jid = key.decode()[len(q.keys.job("")) :]
        st = (await client.hget(key, "st") or b"waiting").decode()
        if where.get(jid) != st:
            problems.append(f"{jid}: st={st}, found in {where.get(jid)}")
    return problems


async def test_a_full_redis_refuses_writes_whole_and_the_queue_recovers(prefix: str) -> None:
    with RedisServer("--maxmemory", "6mb", "--maxmemory-policy", "noeviction") as srv:
        client = aioredis.from_url(srv.url)
        q = JobQueue("oom", redis=srv.url, prefix=prefix, worker={"concurrency": 10})
        done: list[str] = []
        gate = asyncio.Event()

        @q.process("n")
        async def n(job: Any) -> str:
            await gate.wait()
            done.append(job.id)
            return "x" * 200  # results take memory too

        added: list[str] = []
        refused: WriteRefusedError | None = None
        try:
            for _ in range(2000):
                before = (await q.get_stats()).waiting
                try:
                    added += await q.add_jobs([("n", {"pad": "p" * 1500}) for _ in range(50)])
                except WriteRefusedError as exc:
                    refused = exc
                    # The refused call wrote nothing: one script call, refused up front.
                    assert (await q.get_stats()).waiting == before
                    break
            assert refused is not None, "Redis never filled up"
            text = str(refused)
            assert "out of memory" in text and "nothing of this call was written" in text
            # The worker drains the full queue: claims and outcomes still go through.
            await q.start()
            gate.set()
            await wait_until(lambda: len(done) == len(added), 30)

            async def recorded() -> bool:
                # Every outcome recorded (completed ones beyond the default retention of
                # 1,000 are removed as they complete).
                st = await q.get_stats()
                return (st.waiting, st.active, st.completed) == (0, 0, min(len(added), 1000))

            await wait_until(recorded, 30)
            assert await _consistent(client, q) == []
            assert sorted(done) == sorted(added)  # each ran once
            # Memory freed (here: a higher limit): adds go through again.
            await client.config_set("maxmemory", "64mb")
            assert await q.add_job("n", {"pad": "after"})
            await wait_until(lambda: len(done) == len(added) + 1, 10)
            assert await _consistent(client, q) == []
        finally:
            await q.close()
            await client.aclose()
