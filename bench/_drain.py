"""Shared by the drain benchmarks that compare variants of one queue in the same run
(``bench_breakers.py``, ``bench_observability.py``, ``bench_tenancy.py``): the timed
drain of no-op jobs (with the Redis commands and CPU it cost, ``measured_drain``), the
interleaved repetitions on one redis-server, and the report."""

from __future__ import annotations

import asyncio
import contextlib
import math
import resource
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from _redis import RedisServer
from kitium_queue import JobQueue

__all__ = [
    "Rate",
    "compare",
    "drain",
    "fresh_queue",
    "measured_drain",
    "redis_url",
    "report",
]


async def fresh_queue(url: str, name: str, prefix: str, concurrency: int) -> Any:
    """Flush the server, then a ``JobQueue`` on it (worker at ``concurrency``, no
    scheduler)."""
    client = aioredis.Redis.from_url(url)
    await client.flushall()
    await client.aclose()
    return JobQueue(
        name, redis=url, prefix=prefix, worker={"concurrency": concurrency, "scheduler": False}
    )


class Rate(float):
    """A drain's jobs/s, with ``cpu_us``: the CPU time this process spent per job
    meanwhile (all its threads; not the redis-server's). On a machine shared with other
    work the CPU time moves far less than the rate does: another process taking the
    cores slows the drain, not the work this process does per job."""

    cpu_us: float = float("nan")


async def drain(q: Any, jobs: int) -> Rate:
    """Add ``jobs`` no-op jobs to ``q`` (``add_jobs``, 1,000 at a time), then time one
    worker from ``start()`` to the last completion; closes ``q``; returns jobs/s (with
    the CPU µs per job)."""
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
    t0, c0 = time.perf_counter(), time.process_time()
    await q.start()
    await asyncio.wait_for(done.wait(), 600)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    await q.close()
    rate = Rate(jobs / elapsed)
    rate.cpu_us = cpu / jobs * 1e6
    return rate


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
    return {
        "rate": (jobs - 1) / (last - first),
        "commands": cmds / jobs,
        "worker_cpu_us": cpu / jobs * 1e6,
        "redis_cpu_us": rcpu / jobs * 1e6,
    }


async def compare(
    url: str | None,
    variants: Sequence[str],
    reps: int,
    one_run: Callable[[str, str, int], Awaitable[float]],
) -> dict[str, list[float]]:
    """``one_run(url, variant, n)`` for every variant, interleaved, ``reps`` times, on
    ``url`` or on a private redis-server; the rates per variant."""
    load = load_average()
    if load:
        print(f"load average at the start: {' '.join(load)} (1, 5, 15 min)")
    with redis_url(url) as target:
        rates: dict[str, list[float]] = {v: [] for v in variants}
        n = 0
        for _ in range(reps):
            for v in variants:
                n += 1
                rates[v].append(await one_run(target, v, n))
    return rates


@contextlib.contextmanager
def redis_url(url: str | None) -> Iterator[str]:
    """``url``, or a private redis-server's for the block (stopped after it)."""
    if url is not None:
        yield url
        return
    server = RedisServer()
    server.start()
    try:
        yield server.url
    finally:
        server.close()


def report(rates: dict[str, list[float]], jobs: int, concurrency: int, reps: int) -> dict[str, Any]:
    """Print the median (min-max) of each variant and its ratio to the first; return
    the figures."""
    first = statistics.median(next(iter(rates.values())))
    first_cpu: float | None = None
    out: dict[str, Any] = {"jobs": jobs, "concurrency": concurrency, "reps": reps, "variants": {}}
    print(f"drain of {jobs:,} no-op jobs, 1 process, concurrency {concurrency}, median of {reps}")
    for v, got in rates.items():
        med = statistics.median(got)
        out["variants"][v] = {
            "median": med,
            "min": min(got),
            "max": max(got),
            "vs_plain": med / first,
        }
        line = (
            f"  {v:10s} {med:10,.0f} jobs/s ({min(got):,.0f}-{max(got):,.0f})"
            f"  {100 * med / first:5.1f} % of plain"
        )
        cpus = [c for c in (getattr(r, "cpu_us", math.nan) for r in got) if not math.isnan(c)]
        if cpus:
            cpu = statistics.median(cpus)
            first_cpu = first_cpu if first_cpu is not None else cpu
            out["variants"][v]["cpu_us_per_job"] = cpu
            # The rate the CPU time alone would allow, against the first variant's.
            line += (
                f"   CPU {cpu:6.1f} µs/job ({min(cpus):.1f}-{max(cpus):.1f})"
                f"  {100 * first_cpu / cpu:5.1f} % of plain"
            )
        print(line)
    load = load_average()
    if load:
        out["load_average"] = [float(x) for x in load]
        print(f"  load average at the end: {' '.join(load)} (1, 5, 15 min)")
    return out


def load_average() -> list[str]:
    """The machine's load average (1, 5, 15 min), as /proc/loadavg has it; [] elsewhere."""
    try:
        return Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        return []
