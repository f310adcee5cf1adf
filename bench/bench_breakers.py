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

Prints the median (min-max) jobs/s of each variant and its ratio to ``plain``.

``--sweep N`` measures the ``breaker-events`` leader's sweep instead: ``N`` breakers,
each with a job name, then ``--reps`` × 20 sweep calls (one page of up to 1,000
breakers each); prints Redis µs per call (``INFO commandstats``) and the call's wall
time. A benchmark, not a test: nothing here asserts.
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

from _drain import compare, drain, fresh_queue, redis_url, report

from kitium_queue import CircuitBreakerManager

VARIANTS = ("plain", "bound", "unbound")


async def one_run(url: str, variant: str, jobs: int, concurrency: int, n: int) -> float:
    q = await fresh_queue(url, f"bench-cb-{n}", "bcb", concurrency)
    if variant != "plain":
        m = CircuitBreakerManager(q, events=False)
        await m.create_breaker(
            {
                "id": "dep",
                "job_name": "noop" if variant == "bound" else None,
                "failure_threshold": {"percentage": 50, "min_requests": 100},
            }
        )
    return await drain(q, jobs)


async def sweep_cost(url: str | None, breakers: int, reps: int) -> dict[str, Any]:
    """Redis µs and wall ms per sweep call, ``breakers`` named breakers listed."""
    from kitium_queue.features.breakers import BreakerEvents

    with redis_url(url) as target:
        q = await fresh_queue(target, "bench-cb-sweep", "bcbs", 1)
        m = CircuitBreakerManager(q, events=False)
        for i in range(0, breakers, 100):
            await asyncio.gather(
                *(
                    m.create_breaker({"id": f"b{k:06d}", "job_name": f"n{k:06d}"})
                    for k in range(i, min(breakers, i + 100))
                )
            )
        client = await q.client()
        ev, usec, wall = BreakerEvents(q), [], []
        for _ in range(reps):
            await client.config_resetstat()
            t0 = time.perf_counter()
            for _ in range(20):
                await ev.sweep()
            wall.append((time.perf_counter() - t0) / 20 * 1000)
            st = (await client.info("commandstats")).get("cmdstat_evalsha", {})
            usec.append(st.get("usec", 0) / max(1, st.get("calls", 1)))
        await q.close()
    out = {
        "breakers": breakers,
        "redis_us_per_sweep": statistics.median(usec),
        "wall_ms_per_sweep": statistics.median(wall),
    }
    print(
        f"sweep of {breakers} named breakers (pages of 1,000): Redis "
        f"{out['redis_us_per_sweep']:.0f} µs per call, {out['wall_ms_per_sweep']:.2f} ms wall"
    )
    return out


async def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.sweep:
        out = await sweep_cost(args.redis, args.sweep, args.reps)
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1))
        return out

    async def run(url: str, variant: str, n: int) -> float:
        return await one_run(url, variant, args.jobs, args.concurrency, n)

    rates = await compare(args.redis, VARIANTS, args.reps, run)
    out = report(rates, args.jobs, args.concurrency, args.reps)
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
    p.add_argument("--sweep", type=int, default=0, help="measure the sweep of N breakers")
    asyncio.run(main(p.parse_args()))
