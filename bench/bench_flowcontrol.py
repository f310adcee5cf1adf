"""Flow control (per-key rate limits, per-key and global concurrency caps): its cost
against the plain queue, measured in one run.

    .venv/bin/python bench/bench_flowcontrol.py                     # 3 repetitions
    .venv/bin/python bench/bench_flowcontrol.py --reps 5 --jobs 20000

Every case runs in a fresh child process against one private ``redis-server``; the
cases are interleaved per repetition (order rotating) and the server is flushed before
each. A child adds its jobs with ``add_jobs`` (batches of 1,000: the enqueue rate,
timed), then one worker (concurrency 20, default settings otherwise) drains them; the
drain rate is timed from the first job start to the last job's run (jobs/s). No limit
is ever reached: what is measured is the bookkeeping, not the waiting.

Cases:
  plain        no-op jobs, no flow control declared
  declared     a rate limit, a concurrency cap and a global cap declared, no job names a
               key (the cost of having them on: their fragments in claim and finish)
  rate         every job with a ``rate_limit_key`` (100 keys, round-robin), limit
               1,000,000 per second per key
  concurrency  every job with a ``concurrency_key`` (100 keys), cap 1,000 per key
  global       ``set_global_concurrency(1000)``, jobs without keys
  all          the three together, every job with both keys

Each child also counts Redis commands per job (``INFO commandstats``, Lua's inner
commands included) and the CPU time of the worker and of redis-server per job. Prints a
Markdown table of medians (min-max); ``--json`` writes every figure. Benchmarks are not
tests: nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _redis import RedisServer

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import asyncio, json, sys, time
import redis.asyncio as aioredis
from _drain import measured_drain
from kitium_queue import JobQueue

async def main(url, case, jobs):
    client = aioredis.Redis.from_url(url)
    await client.flushall()
    q = JobQueue("bench-fc", redis=url, worker={"concurrency": 20, "scheduler": False})
    if case in ("declared", "rate", "all"):
        q.set_rate_limit("cust-*", max=1_000_000, duration=1000)
    if case in ("declared", "concurrency", "all"):
        q.set_concurrency_limit("cust-*", 1000)
    if case in ("declared", "global", "all"):
        q.set_global_concurrency(1000)

    def opts(i):
        k = f"cust-{i % 100}"
        if case == "rate":
            return {"rate_limit_key": k}
        if case == "concurrency":
            return {"concurrency_key": k}
        if case == "all":
            return {"rate_limit_key": k, "concurrency_key": k}
        return {}

    t0 = time.perf_counter()
    for start in range(0, jobs, 1000):
        await q.add_jobs([("noop", None, opts(start + i))
                          for i in range(min(1000, jobs - start))])
    enqueue = jobs / (time.perf_counter() - t0)
    got = await measured_drain(q, jobs)
    got["enqueue"] = enqueue
    await client.aclose()
    print(json.dumps(got))

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


CASES = ("plain", "declared", "rate", "concurrency", "global", "all")


def child(code: str, *args: str) -> dict[str, Any]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "bench")]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], check=True, capture_output=True, text=True, env=env
    )
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=20_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", help="write every figure to this file")
    args = ap.parse_args()
    got: dict[str, list[dict[str, Any]]] = {c: [] for c in CASES}
    with RedisServer() as server:
        for rep in range(args.reps):
            order = CASES[rep % len(CASES) :] + CASES[: rep % len(CASES)]
            for case in order:
                r = child(_CHILD, server.url, case, str(args.jobs))
                got[case].append(r)
                print(
                    f"rep {rep + 1} {case:11s}: drain {r['rate']:,.0f} jobs/s, enqueue "
                    f"{r['enqueue']:,.0f} jobs/s, {r['commands']:.2f} commands/job, "
                    f"redis CPU {r['redis_cpu_us']:.1f} us/job, worker CPU "
                    f"{r['worker_cpu_us']:.1f} us/job"
                )

    def med(case: str, key: str) -> float:
        return statistics.median(r[key] for r in got[case])

    print(f"\nmedians of {args.reps} ({args.jobs:,} no-op jobs, concurrency 20):")
    print(
        "| case | drain (jobs/s) | vs plain | enqueue (jobs/s) | vs plain | commands/job "
        "| redis CPU µs/job | worker CPU µs/job |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for case in CASES:
        rates = [r["rate"] for r in got[case]]
        print(
            f"| {case} | {med(case, 'rate'):,.0f} ({min(rates):,.0f}–{max(rates):,.0f}) | "
            f"{med(case, 'rate') / med('plain', 'rate') * 100:.0f} % | "
            f"{med(case, 'enqueue'):,.0f} | "
            f"{med(case, 'enqueue') / med('plain', 'enqueue') * 100:.0f} % | "
            f"{med(case, 'commands'):.2f} | {med(case, 'redis_cpu_us'):.1f} | "
            f"{med(case, 'worker_cpu_us'):.1f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"cases": got}, indent=1))


if __name__ == "__main__":
    main()
