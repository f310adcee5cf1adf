"""Shared by the drain benchmarks that compare variants of one queue in the same run
(``bench_breakers.py``, ``bench_observability.py``, ``bench_tenancy.py``): the timed
drain of no-op jobs (with the Redis commands and CPU it cost, ``measured_drain``), the
interleaved repetitions on one redis-server, and the report."""

from __future__ import annotations

import asyncio
import resource
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio as aioredis

from _redis import RedisServer
from kitium_queue import JobQueue

__all__ = ["compare", "drain", "fresh_queue", "measured_drain", "report"]


async def fresh_queue(url: str, name: str, prefix: str, concurrency: int) -> Any:
    """Flush the server, then a ``JobQueue`` on it (worker at ``concurrency``, no
    scheduler)."""
    client = aioredis.Redis.from_url(url)
    await client.flushall()
    await client.aclose()
    return JobQueue(name, redis=url, prefix=prefix,
                    worker={"concurrency": concurrency, "scheduler": False})


async def drain(q: Any, jobs: int) -> float:
    """Add ``jobs`` no-op jobs to ``q`` (``add_jobs``, 1,000 at a time), then time one
    worker from ``start()`` to the last completion; closes ``q``; returns jobs/s."""
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


async def measured_drain(q: Any, jobs: int) -> dict[str, float]:
    """Time one worker of ``q`` draining the ``jobs`` no-op ``noop`` jobs already in it,
    from the first job's start to the last job's run; closes ``q``. Returns the rate
    (jobs/s), and per job the Redis commands run (``INFO commandstats``, Lua's inner
    commands included) and the CPU time of this process and of redis-server (µs)."""
    done = asyncio.Event()
    count = 0
    first = last = 0.0

    async def noop(job: Any) -> None:
        nonlocal count, first, last
        if count == 0:
            first = time.perf_counter()
        count += 1
        if count == jobs:
            last = time.perf_counter()
            done.set()

    def commands(info: dict[str, Any]) -> int:
        return sum(v["calls"] for k, v in info.items() if k.startswith("cmdstat_"))

    def own_cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    async def redis_cpu() -> float:
        info = await client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    q.process("noop", noop)
    client = await q.client()
    cmd0 = commands(await client.info("commandstats"))
    rcpu0, cpu0 = await redis_cpu(), own_cpu()
    await q.start()
    await asyncio.wait_for(done.wait(), 600)
    cpu, rcpu = own_cpu() - cpu0, await redis_cpu() - rcpu0
    cmds = commands(await client.info("commandstats")) - cmd0 - 2
    await q.close()
    return {"rate": (jobs - 1) / (last - first), "commands": cmds / jobs,
            "worker_cpu_us": cpu / jobs * 1e6, "redis_cpu_us": rcpu / jobs * 1e6}


async def compare(
    url: str | None, variants: Sequence[str], reps: int,
    one_run: Callable[[str, str, int], Awaitable[float]],
) -> dict[str, list[float]]:
    """``one_run(url, variant, n)`` for every variant, interleaved, ``reps`` times, on
    ``url`` or on a private redis-server; the rates per variant."""
    server = None
    if url is None:
        server = RedisServer()
        server.start()
        url = server.url
    try:
        rates: dict[str, list[float]] = {v: [] for v in variants}
        n = 0
        for _ in range(reps):
            for v in variants:
                n += 1
                rates[v].append(await one_run(url, v, n))
    finally:
        if server is not None:
            server.close()
    return rates


def report(rates: dict[str, list[float]], jobs: int, concurrency: int,
           reps: int) -> dict[str, Any]:
    """Print the median (min-max) of each variant and its ratio to the first; return
    the figures."""
    first = statistics.median(next(iter(rates.values())))
    out: dict[str, Any] = {"jobs": jobs, "concurrency": concurrency, "reps": reps,
                           "variants": {}}
    print(f"drain of {jobs:,} no-op jobs, 1 process, concurrency {concurrency}, "
          f"median of {reps}")
    for v, got in rates.items():
        med = statistics.median(got)
        out["variants"][v] = {"median": med, "min": min(got), "max": max(got),
                              "vs_plain": med / first}
        print(f"  {v:10s} {med:10,.0f} jobs/s ({min(got):,.0f}-{max(got):,.0f})"
              f"  {100 * med / first:5.1f} % of plain")
    return out
