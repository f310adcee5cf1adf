"""What ``find_orphans`` (the walk of a queue's job records) costs (``orphans.py``).

For each size, on a fresh private ``redis-server`` (no persistence, ``SLOWLOG`` at
1 ms): that many waiting no-op jobs, then

* ``report``: a walk that finds nothing (every record listed): wall time, records/s,
  Redis µs per record (``INFO commandstats``: the scripts and ``SCAN``), and the longest
  single Redis command it caused (``SLOWLOG``, µs; issue 18's bound is 50 ms);
* ``repair``: the ``wait`` set deleted (every record an orphan), then a walk with
  ``repair=True``: the same figures, and how many it put back.

Then the cost to a running queue: a worker (concurrency 20) drains no-op jobs for
``--seconds`` alone, then as long again while walks of the same queue run back to back
(the worst case; its records: the 400,000 waiting jobs each window starts with, and the
1,000 completed ones retention keeps), taking turns ``--reps`` times: jobs/s of each
(median).

    .venv/bin/python bench/bench_orphans.py [--sizes 10000,100000,1000000] [--seconds 5]

Benchmarks are not tests: nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _redis import RedisServer
from kitium_queue import JobQueue
from kitium_queue.orphans import find_orphans

#: Waiting jobs at the start of each window of the drain comparison: more than a
#: worker drains in one.
_BACKLOG = 400_000


async def _fill(q: JobQueue, n: int) -> None:
    sem = asyncio.Semaphore(4)

    async def chunk(lo: int) -> None:
        async with sem:
            await q.add_jobs([("noop", {"i": i}) for i in range(lo, min(n, lo + 1000))])

    await asyncio.gather(*(chunk(lo) for lo in range(0, n, 1000)))


async def _usec(r: aioredis.Redis) -> int:
    stats = await r.info("commandstats")
    return sum(
        int(v["usec"])
        for k, v in stats.items()
        if k.removeprefix("cmdstat_") in ("evalsha", "eval", "scan")
    )


async def _walk(q: JobQueue, r: aioredis.Redis, n: int, repair: bool) -> dict[str, Any]:
    await r.slowlog_reset()
    await r.config_resetstat()
    t0 = time.perf_counter()
    report = await find_orphans(q, repair=repair)
    wall = time.perf_counter() - t0
    log = await r.slowlog_get(128)
    worst = max((int(e["duration"]) for e in log), default=0)
    return {
        "wall_s": wall,
        "records_per_s": report.examined / max(wall, 1e-9),
        "redis_us_per_record": await _usec(r) / max(1, n),
        "max_command_us": worst,
        "orphans": report.orphans,
    }


async def _size(n: int) -> dict[str, Any]:
    slowlog = ["--slowlog-log-slower-than", "1000", "--slowlog-max-len", "1024"]
    srv = RedisServer(args=slowlog).start()
    try:
        q = JobQueue("orph", redis=srv.url)
        r = aioredis.Redis.from_url(srv.url)
        await _fill(q, n)
        report = await _walk(q, r, n, repair=False)
        await r.delete(q.keys.wait)
        repair = await _walk(q, r, n, repair=True)
        await q.close()
        await r.aclose()
        return {"n": n, "report": report, "repair": repair}
    finally:
        srv.close()


async def _drain_cost(seconds: float, reps: int) -> tuple[list[float], list[float]]:
    srv = RedisServer().start()
    try:
        q = JobQueue("orph-d", redis=srv.url, worker={"concurrency": 20})
        done = 0

        async def noop(job: Any) -> None:
            nonlocal done
            done += 1

        q.process("noop", noop)
        await _fill(q, _BACKLOG)
        await q.start()
        alone: list[float] = []
        walked: list[float] = []
        for _ in range(reps):
            for busy, into in ((False, alone), (True, walked)):
                stop = asyncio.Event()

                async def walks(stop: asyncio.Event) -> None:
                    while not stop.is_set():
                        await find_orphans(q)

                task = asyncio.create_task(walks(stop)) if busy else None
                waiting = (await q.get_stats()).waiting
                if waiting < _BACKLOG:  # never runs dry within a window
                    await _fill(q, _BACKLOG - waiting)
                start, t0 = done, time.perf_counter()
                await asyncio.sleep(seconds)
                into.append((done - start) / (time.perf_counter() - t0))
                stop.set()
                if task is not None:
                    await task
        await q.close()
        return alone, walked
    finally:
        srv.close()


def _sizes(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


async def main(args: argparse.Namespace) -> None:
    print("| records | walk | wall (s) | records/s | Redis µs/record | longest command (ms) |")
    print("|---|---|---|---|---|---|")
    for n in _sizes(args.sizes):
        row = await _size(n)
        for kind in ("report", "repair"):
            m = row[kind]
            label = kind if kind == "report" else f"repair ({m['orphans']:,} put back)"
            print(
                f"| {n:,} | {label} | {m['wall_s']:.2f} | {m['records_per_s']:,.0f} | "
                f"{m['redis_us_per_record']:.2f} | {m['max_command_us'] / 1000:.1f} |"
            )
    alone, walked = await _drain_cost(args.seconds, args.reps)
    a, w = statistics.median(alone), statistics.median(walked)
    print(
        f"\ndrain, concurrency 20: alone {a:,.0f} jobs/s "
        f"({', '.join(f'{x:,.0f}' for x in alone)}); with walks back to back {w:,.0f} "
        f"({', '.join(f'{x:,.0f}' for x in walked)}): {100 * (w - a) / a:+.1f} %"
    )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--reps", type=int, default=3)
    return p.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
