"""A new queue's first ``add_job`` against its second: what composing the Lua scripts
costs a queue made in a process that already has one with the same fragments and slots
(``expanded.py``), and one that has none.

    .venv/bin/python bench/bench_first_add.py [--url redis://127.0.0.1:6379] [--queues 5]

Per line: ms of the first and of the second awaited ``add_job`` of each new queue (each
queue closed before the next is made). Benchmarks are not tests: nothing here asserts.
Keys go under ``kqfa:`` and are removed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import redis

from kitium_queue import JobQueue


async def _two_adds(url: str, name: str) -> tuple[float, float]:
    q = JobQueue(name, redis=url, prefix="kqfa")
    try:
        t0 = time.perf_counter()
        await q.add_job("x", {})
        t1 = time.perf_counter()
        await q.add_job("x", {})
        t2 = time.perf_counter()
    finally:
        await q.close()
    return (t1 - t0) * 1000, (t2 - t1) * 1000


async def main(url: str, queues: int) -> None:
    first = await _two_adds(url, "cold")  # the process's first queue: composes its scripts
    print(f"first queue of the process: first add {first[0]:.2f} ms, second {first[1]:.2f} ms")
    warm = JobQueue("warm", redis=url, prefix="kqfa")  # kept alive: its scripts are shared
    await warm.add_job("x", {})
    for i in range(queues):
        a, b = await _two_adds(url, f"q{i}")
        print(f"new queue {i + 1} (one like it alive): first add {a:.2f} ms, second {b:.2f} ms")
    await warm.close()
    r = redis.Redis.from_url(url)
    keys = list(r.scan_iter("kqfa*", count=1000))
    if keys:
        r.delete(*keys)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="redis://127.0.0.1:6379")
    p.add_argument("--queues", type=int, default=5)
    args = p.parse_args()
    asyncio.run(main(args.url, args.queues))
