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
  parked       every job with a ``concurrency_key`` (5 keys), cap 2 per key: at most 10
               of the worker's 20 slots run, most claims park jobs behind their key and
               every release lets the next one out (the one case where limits are
               reached: the cost of parking, letting out and the let-out count the
               flow heal reads)

Each child also counts Redis commands per job (``INFO commandstats``, Lua's inner
commands included) and the CPU time of the worker and of redis-server per job. Prints a
Markdown table of medians (min-max); ``--json`` writes every figure. Benchmarks are not
tests: nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cases import interleaved, table

from _redis import RedisServer

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
    if case == "parked":
        q.set_concurrency_limit("cust-*", 2)
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
        if case == "parked":
            return {"concurrency_key": f"cust-{i % 5}"}
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


CASES = ("plain", "declared", "rate", "concurrency", "global", "all", "parked")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=20_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", help="write every figure to this file")
    ap.add_argument("--cases", help=f"comma-separated subset of {','.join(CASES)}")
    args = ap.parse_args()
    cases = CASES
    if args.cases:
        cases = tuple(c.strip() for c in args.cases.split(","))
        unknown = sorted(set(cases) - set(CASES))
        if unknown:
            ap.error(f"unknown case(s) {', '.join(unknown)}: choose from {', '.join(CASES)}")
    with RedisServer() as server:
        got = interleaved(server.url, _CHILD, cases, args.reps, args.jobs)
    table(got, args.reps, args.jobs)
    if args.json:
        Path(args.json).write_text(json.dumps({"cases": got}, indent=1))


if __name__ == "__main__":
    main()
