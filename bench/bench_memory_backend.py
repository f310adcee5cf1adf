"""The embedded ``memory://`` backend with its fast script path (``memorystore.py``) on
and off: jobs/s drained at concurrency 1 and 20, and awaited ``add_job`` calls/s, the
two taking turns (``--reps`` rounds, a fresh store each time; medians).

``--growth N`` instead drains N no-op jobs through one fast store and prints, every
N/10 jobs, the process' RSS and the store's Lua heap (``collectgarbage("count")``): with
no full collection per script call, both stay flat once warm.

    .venv/bin/python bench/bench_memory_backend.py [--jobs 2000] [--adds 2000] [--reps 3]
    .venv/bin/python bench/bench_memory_backend.py --growth 20000

Benchmarks are not tests: nothing here asserts. Stores are per process, nothing is left.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kitium_queue import JobQueue
from kitium_queue.memorystore import memory_server

_names = itertools.count()


def _store(fast: bool) -> str:
    """A new ``memory://`` URL whose store runs its scripts ``fast`` or not."""
    name = f"bench-{'fast' if fast else 'stock'}-{next(_names)}"
    memory_server(name, fast_scripts=fast)
    return f"memory://{name}"


async def _drain(
    url: str, jobs: int, concurrency: int, every: Callable[[int], None] | None = None
) -> float:
    """Jobs/s of ``concurrency`` workers draining ``jobs`` queued no-op jobs."""
    q = JobQueue("bench", redis=url, worker={"concurrency": concurrency, "scheduler": False})
    done, count = asyncio.Event(), [0]

    async def work(job: Any) -> None:
        count[0] += 1
        if every is not None:
            every(count[0])
        if count[0] == jobs:
            done.set()

    q.process("w", work)
    for start in range(0, jobs, 1000):
        await q.add_jobs([("w", {}, {}) for _ in range(min(1000, jobs - start))])
    t0 = time.perf_counter()
    await q.start()
    await asyncio.wait_for(done.wait(), 600)
    elapsed = time.perf_counter() - t0
    await q.close()
    return jobs / elapsed


async def _adds(url: str, calls: int) -> float:
    """Awaited ``add_job`` calls/s, one after another."""
    q = JobQueue("bench", redis=url)
    await q.add_job("w", {"i": -1})  # scripts loaded
    t0 = time.perf_counter()
    for i in range(calls):
        await q.add_job("w", {"i": i})
    elapsed = time.perf_counter() - t0
    await q.close()
    return calls / elapsed


async def _compare(jobs: int, adds: int, reps: int) -> None:
    cases: dict[tuple[str, bool], list[float]] = {}
    for _ in range(reps):
        for fast in (True, False):
            for concurrency in (1, 20):
                rate = await _drain(_store(fast), jobs, concurrency)
                cases.setdefault((f"drain, concurrency {concurrency} (jobs/s)", fast), []).append(
                    rate
                )
            rate = await _adds(_store(fast), adds)
            cases.setdefault(("add_job, awaited one by one (calls/s)", fast), []).append(rate)
    print(f"{'case':42} {'fast path':>10} {'stock':>10} {'ratio':>7}")
    for label in dict.fromkeys(label for label, _ in cases):
        on = statistics.median(cases[(label, True)])
        off = statistics.median(cases[(label, False)])
        print(f"{label:42} {on:10.0f} {off:10.0f} {on / off:6.1f}x")


def _rss_mib() -> float:
    """The process' resident set now (Linux), else its peak."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _growth(jobs: int) -> None:
    url = _store(True)
    runtime = memory_server(url[len("memory://") :])._lua_runtime
    step = max(1, jobs // 10)

    def sample(done: int) -> None:
        if done % step == 0:
            lua = runtime.eval('collectgarbage("count")') / 1024
            print(f"{done:8d} jobs  RSS {_rss_mib():7.1f} MiB  Lua heap {lua:6.2f} MiB", flush=True)

    rate = await _drain(url, jobs, 20, sample)
    print(f"{rate:.0f} jobs/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per drain")
    parser.add_argument("--adds", type=int, default=2000, help="add_job calls per case")
    parser.add_argument("--reps", type=int, default=3, help="rounds, fast and stock in turn")
    parser.add_argument("--growth", type=int, default=0, help="drain this many and watch memory")
    args = parser.parse_args()
    if args.growth:
        asyncio.run(_growth(args.growth))
    else:
        asyncio.run(_compare(args.jobs, args.adds, args.reps))


if __name__ == "__main__":
    main()
