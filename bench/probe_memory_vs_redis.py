"""One worker draining no-op jobs on the embedded ``memory://`` backend and on a local
Redis, in one run: milliseconds per job at the given concurrency.

    .venv/bin/python bench/probe_memory_vs_redis.py [--concurrency 1] [--jobs 1000]
        [--url redis://127.0.0.1:6379/0]

Benchmarks are not tests: nothing here asserts. Keys go under ``kqmemprobe:`` and are
removed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kitium_queue import JobQueue


async def drain(url: str, jobs: int, concurrency: int) -> float:
    """Seconds from the worker's start to the last of ``jobs`` no-op jobs run."""
    q = JobQueue(
        "memprobe",
        redis=url,
        prefix="kqmemprobe",
        worker={"concurrency": concurrency, "scheduler": False},
    )
    done, ran = asyncio.Event(), [0]

    async def work(job: Any) -> None:
        ran[0] += 1
        if ran[0] == jobs:
            done.set()

    q.process("w", work)
    await q.add_jobs([("w", {}, {}) for _ in range(jobs)])
    started = time.perf_counter()
    await q.start()
    await asyncio.wait_for(done.wait(), 600)
    took = time.perf_counter() - started
    await q.close()
    if url.startswith("redis"):
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(url)
        keys = [k async for k in client.scan_iter(match="kqmemprobe:*", count=1000)]
        for i in range(0, len(keys), 500):
            await client.delete(*keys[i : i + 500])
        await client.aclose()
    return took


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--url", default="redis://127.0.0.1:6379/0")
    args = ap.parse_args()
    for url in ("memory://", args.url):
        took = await drain(url, args.jobs, args.concurrency)
        print(f"{url:32s} {took * 1000 / args.jobs:6.2f} ms/job (concurrency {args.concurrency})")


if __name__ == "__main__":
    asyncio.run(main())
