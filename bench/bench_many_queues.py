"""What many queues in one process cost (docs/scale-out.md, "Many queues in one process").

For each size, on a fresh private ``redis-server``: that many ``JobQueue`` objects in
this process, each with a worker started (default settings: concurrency 20, the
scheduler on), all started at once; then

* start: wall time of starting them all, and of ``close()`` of all at the end;
* Redis connections (``CLIENT LIST``), this process's RSS and asyncio tasks;
* idle: Redis commands per queue per second over ``--idle`` seconds with nothing added
  (``INFO commandstats``, commands inside scripts included);
* latency: a job added to one queue at random, ``--samples`` times, until its processor
  starts (ms: p50, p99, max).

    .venv/bin/python bench/bench_many_queues.py [--sizes 200,1000] [--idle 20]

Needs an open-files limit above 6 per queue. Benchmarks are not tests: nothing here
asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import random
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


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _calls(r: aioredis.Redis) -> int:
    stats = await r.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if "info" not in k)


async def _size(n: int, idle: float, samples: int) -> dict[str, Any]:
    srv = RedisServer(args=["--maxclients", "20000"]).start()
    r = aioredis.Redis.from_url(srv.url)
    started: dict[str, asyncio.Event] = {}
    queues = [JobQueue(f"tenant-{i}", redis=srv.url) for i in range(n)]
    try:
        for q in queues:
            started[q.name] = asyncio.Event()

            async def work(job: Any, name: str = q.name) -> None:
                started[name].set()

            q.process("work", work)
        t0 = time.perf_counter()
        await asyncio.gather(*(q.start() for q in queues))
        start_s = time.perf_counter() - t0
        await asyncio.sleep(6)  # the lazy first steps of every loop
        clients = len(await r.client_list()) - 1
        before, t0 = await _calls(r), time.perf_counter()
        await asyncio.sleep(idle)
        per_queue_s = (await _calls(r) - before) / (time.perf_counter() - t0) / n
        lat: list[float] = []
        for _ in range(samples):
            q = random.choice(queues)
            started[q.name].clear()
            t0 = time.perf_counter()
            await q.add_job("work", {})
            await started[q.name].wait()
            lat.append((time.perf_counter() - t0) * 1000)
            await asyncio.sleep(0.02)
        lat.sort()
        out = {
            "n": n,
            "start_s": start_s,
            "connections": clients,
            "rss_mb": _rss_mb(),
            "tasks": len(asyncio.all_tasks()),
            "idle_cmds_per_queue_s": per_queue_s,
            "p50_ms": statistics.median(lat),
            "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
            "max_ms": lat[-1],
        }
        t0 = time.perf_counter()
        await asyncio.gather(*(q.close() for q in queues))
        out["close_s"] = time.perf_counter() - t0
        return out
    finally:
        for q in queues:
            await q.close()
        await r.aclose()
        srv.close()


async def main(args: argparse.Namespace) -> None:
    print(
        "| queues | start (s) | close (s) | connections | RSS (MB) | tasks "
        "| idle cmds/queue/s | enqueue→start p50 / p99 / max (ms) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for n in [int(x) for x in args.sizes.split(",") if x]:
        m = await _size(n, args.idle, args.samples)
        print(
            f"| {n:,} | {m['start_s']:.1f} | {m['close_s']:.1f} | {m['connections']:,} | "
            f"{m['rss_mb']:.0f} | {m['tasks']:,} | {m['idle_cmds_per_queue_s']:.1f} | "
            f"{m['p50_ms']:.2f} / {m['p99_ms']:.1f} / {m['max_ms']:.1f} |"
        )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--sizes", default="200,1000")
    p.add_argument("--idle", type=float, default=20.0)
    p.add_argument("--samples", type=int, default=100)
    return p.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
