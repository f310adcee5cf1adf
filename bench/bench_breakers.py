"""Circuit breakers: the cost of holding-capable breakers on the drain rate.

    .venv/bin/python bench/bench_breakers.py                      # private redis-server
    .venv/bin/python bench/bench_breakers.py --jobs 20000 --reps 3 --concurrency 20
    .venv/bin/python bench/bench_breakers.py --redis redis://127.0.0.1:6379/0 --json out.json

One worker in this process drains ``--jobs`` no-op jobs (added beforehand with
``add_jobs``), timed from the worker's start to the last completion, in three variants
run interleaved, ``--reps`` times each, on one redis-server (flushed before each run):

* ``plain``: the queue as it is, no breaker manager;
* ``bound``: a ``CircuitBreakerManager`` on the queue and every job bound (by its name)
  to a closed breaker: each claim checks the breaker and each outcome is counted in its
  rolling window, atomically with the job's transition;
* ``unbound``: the manager on the queue, the jobs bound to no breaker (the cost of the
  slot fragments alone).

Prints the median (min-max) jobs/s of each variant and its ratio to ``plain``. A
benchmark, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis.asyncio as aioredis

from _redis import RedisServer
from kitium_queue import CircuitBreakerManager, JobQueue

VARIANTS = ("plain", "bound", "unbound")


async def one_run(url: str, variant: str, jobs: int, concurrency: int, n: int) -> float:
    client = aioredis.Redis.from_url(url)
    await client.flushall()
    await client.aclose()
    q = JobQueue(f"bench-cb-{n}", redis=url, prefix="bcb",
                 worker={"concurrency": concurrency, "scheduler": False})
    if variant != "plain":
        m = CircuitBreakerManager(q, events=False)
        await m.create_breaker({"id": "dep", "job_name": "noop" if variant == "bound" else None,
                                "failure_threshold": {"percentage": 50, "min_requests": 100}})
    done = asyncio.Event()
    count = 0

    async def noop(job: Any) -> None:
        nonlocal count
        count += 1
        if count == jobs:
            done.set()

    q.process("noop", noop)
    for i in range(0, jobs, 1000):
        await q.add_jobs([("noop", None) for _ in range(min(1000, jobs - i))])
    t0 = time.perf_counter()
    await q.start()
    await asyncio.wait_for(done.wait(), 600)
    elapsed = time.perf_counter() - t0
    await q.close()
    return jobs / elapsed


async def main(args: argparse.Namespace) -> dict[str, Any]:
    server = None
    url = args.redis
    if url is None:
        server = RedisServer()
        server.start()
        url = server.url
    try:
        rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
        n = 0
        for _ in range(args.reps):
            for v in VARIANTS:
                n += 1
                rates[v].append(await one_run(url, v, args.jobs, args.concurrency, n))
    finally:
        if server is not None:
            server.close()
    plain = statistics.median(rates["plain"])
    out: dict[str, Any] = {"jobs": args.jobs, "concurrency": args.concurrency,
                           "reps": args.reps, "variants": {}}
    print(f"drain of {args.jobs:,} no-op jobs, 1 process, concurrency {args.concurrency}, "
          f"median of {args.reps}")
    for v in VARIANTS:
        med = statistics.median(rates[v])
        out["variants"][v] = {"median": med, "min": min(rates[v]), "max": max(rates[v]),
                              "vs_plain": med / plain}
        print(f"  {v:8s} {med:10,.0f} jobs/s ({min(rates[v]):,.0f}-{max(rates[v]):,.0f})"
              f"  {100 * med / plain:5.1f} % of plain")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--redis", default=None, help="a Redis URL (default: a private server)")
    p.add_argument("--jobs", type=int, default=20_000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--json", default=None)
    asyncio.run(main(p.parse_args()))
