"""What the eviction watch (``kitium_queue.evictwatch``) costs, on a private redis-server.

1. **Idle**: ``--queues`` queues with a worker each, idle for ``--idle`` seconds, with
   and without the watch (it is left out by giving each queue a no-op service of the
   watch's name): Redis commands per second per queue (``INFO commandstats``).
2. **After an eviction**: ``--jobs`` waiting jobs whose ``wait`` set Redis evicts for
   real (``volatile-lru``, the set the only key with a TTL): the time the watch's look
   takes to walk the records and put them all back, and the longest command meanwhile
   (``SLOWLOG``).

Run: ``.venv/bin/python bench/bench_eviction_watch.py [--queues 20 --idle 60 --jobs 100000]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import OutOfMemoryError

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _redis import RedisServer
from kitium_queue import JobQueue, evictwatch


class _NoWatch:
    name = evictwatch.NAME

    async def start(self, queue: Any) -> None:
        return None

    async def stop(self) -> None:
        return None


async def _commands(c: aioredis.Redis) -> int:
    stats = await c.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values())


async def idle(url: str, queues: int, seconds: float, watch: bool) -> float:
    c = aioredis.from_url(url)
    await c.flushall()
    qs = []
    for i in range(queues):
        q = JobQueue(f"idle{i}", redis=url, settings={"allow_eviction": True})
        q.process("n", lambda job: None)
        if not watch:
            q.add_service(_NoWatch())
        qs.append(q)
    for q in qs:
        await q.start()
    await asyncio.sleep(5)  # past the start's own commands
    await c.config_resetstat()
    await asyncio.sleep(seconds)
    calls = await _commands(c)
    for q in qs:
        await q.close()
    await c.aclose()
    return calls / seconds / queues


async def after_eviction(url: str, jobs: int) -> dict[str, float]:
    c = aioredis.from_url(url)
    await c.flushall()
    q = JobQueue("evicted", redis=url, settings={"allow_eviction": True})
    for start in range(0, jobs, 1000):
        await q.add_jobs([{"name": "n", "data": {"i": i}} for i in range(start, start + 1000)])
    assert await c.pexpire(q.keys.wait, 10**9)
    used = int((await c.info("memory"))["used_memory"])
    await c.config_set("maxmemory", str(used - 1024))
    with contextlib.suppress(OutOfMemoryError):
        await c.set("filler", "x")
    await c.config_set("maxmemory", "0")
    assert not await c.exists(q.keys.wait), "the wait set was not evicted"
    await c.config_set("slowlog-log-slower-than", "1000")
    await c.slowlog_reset()
    watch = evictwatch.EvictionWatch(q)
    began = time.perf_counter()
    await watch.look()
    took = time.perf_counter() - began
    back = int(await c.zcard(q.keys.wait))
    slow = await c.slowlog_get(1000)
    top = max(slow, key=lambda e: int(e["duration"]), default=None)
    longest = 0.0 if top is None else int(top["duration"]) / 1000
    what = "" if top is None else top["command"][:40]
    print(f"  longest: {what!r}")
    await q.close()
    await c.aclose()
    return {"jobs": jobs, "put_back": back, "walk_s": took, "longest_command_ms": longest}


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queues", type=int, default=20)
    ap.add_argument("--idle", type=float, default=60.0)
    ap.add_argument("--jobs", type=int, default=100_000)
    a = ap.parse_args()
    with RedisServer("--maxmemory-policy", "volatile-lru") as srv:
        with_watch = await idle(srv.url, a.queues, a.idle, True)
        without = await idle(srv.url, a.queues, a.idle, False)
        print(
            f"idle, {a.queues} queues, {a.idle:.0f} s: {without:.2f} commands/s per queue "
            f"without the watch, {with_watch:.2f} with it (+{with_watch - without:.2f})"
        )
        got = await after_eviction(srv.url, a.jobs)
        print(
            f"after the eviction of a wait set of {got['jobs']:,} jobs: {got['put_back']:,} "
            f"put back by one look in {got['walk_s']:.1f} s; longest command "
            f"{got['longest_command_ms']:.1f} ms"
        )


if __name__ == "__main__":
    asyncio.run(main())
