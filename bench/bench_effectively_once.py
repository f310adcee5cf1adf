"""Effectively-once: its cost against the plain queue, in one run.

Each case adds ``--jobs`` no-op jobs (``add_jobs`` in batches of 1,000, timed) and drains
them with one worker (concurrency 20), in a fresh child process against one private
``redis-server``; cases are interleaved per repetition.

    .venv/bin/python bench/bench_effectively_once.py                 # 20,000 jobs, 5 reps
    .venv/bin/python bench/bench_effectively_once.py --jobs 50000 --reps 3

Cases:
  plain          no manager, no key
  keyed          IdempotencyManager installed, every job with its own idempotency_key
                 (the ttl window: duplicate suppression only)
  exactly-once   the same with delivery_guarantee exactly-once: each completion copies
                 its result under the key
  eo+remove      exactly-once and remove_on_complete=True (the stored result outlives
                 the job)
  duplicates     exactly-once adds of keys that already completed (add rate only:
                 each returns the first id, runs nothing)
  conflicts      as keyed, with IdempotencyManager(queue, conflicts="raise"): a new key
                 pays nothing more
  dup+conflicts  as duplicates, with conflicts="raise": each repeated key (same data)
                 reads the job found and compares its data before returning its id

Prints add and drain rates per repetition, medians, and each case against ``plain``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _redis import RedisServer

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import asyncio, json, sys, time
from kitium_queue import JobQueue, IdempotencyManager

async def main(url, name, jobs, case):
    q = JobQueue(name, redis=url, worker={"concurrency": 20})
    if case in ("conflicts", "dup+conflicts"):
        IdempotencyManager(q, conflicts="raise")
    elif case != "plain":
        IdempotencyManager(q)
    def opts(i):
        if case == "plain":
            return {}
        o = {"idempotency_key": f"k-{i}"}
        if case in ("exactly-once", "eo+remove", "duplicates", "dup+conflicts"):
            o["delivery_guarantee"] = "exactly-once"
        if case == "eo+remove":
            o["remove_on_complete"] = True
        return o
    done = asyncio.Event()
    count = 0
    target = jobs

    async def noop(job):
        nonlocal count
        count += 1
        if count == target:
            done.set()
        return 1

    q.process("noop", noop)
    t0 = time.perf_counter()
    for start in range(0, jobs, 1000):
        await q.add_jobs([("noop", {"i": i}, opts(i))
                          for i in range(start, min(jobs, start + 1000))])
    add = jobs / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    await q.start()
    await done.wait()
    drain = jobs / (time.perf_counter() - t0)
    if case in ("duplicates", "dup+conflicts"):
        await asyncio.sleep(0.2)
        t0 = time.perf_counter()
        for start in range(0, jobs, 1000):
            await q.add_jobs([("noop", {"i": i}, opts(i))
                              for i in range(start, min(jobs, start + 1000))])
        add = jobs / (time.perf_counter() - t0)
        await asyncio.sleep(0.2)
        assert count == jobs, "a duplicate ran"
    await q.clear(force=True)
    await q.close()
    print(json.dumps({"add": add, "drain": drain}))

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]))
"""

CASES = ("plain", "keyed", "exactly-once", "eo+remove", "duplicates", "conflicts",
         "dup+conflicts")


def _run(url: str, name: str, jobs: int, case: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, url, name, str(jobs), case],
        check=True, capture_output=True, text=True, env=env, timeout=900,
    ).stdout
    got: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jobs", type=int, default=20000)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    rates: dict[str, dict[str, list[float]]] = {c: {"add": [], "drain": []} for c in CASES}
    with RedisServer() as srv:
        for rep in range(args.reps):
            for case in CASES:
                r = _run(srv.url, f"eo-{case}-{rep}", args.jobs, case)
                for k in ("add", "drain"):
                    rates[case][k].append(r[k])
                print(f"rep {rep + 1} {case:13s} add {r['add']:9.0f}/s  "
                      f"drain {r['drain']:9.0f}/s", flush=True)
    base = {k: statistics.median(rates["plain"][k]) for k in ("add", "drain")}
    print(f"\n{args.jobs} jobs, {args.reps} repetitions, medians (min-max), vs plain:")
    for case in CASES:
        parts = []
        for k in ("add", "drain"):
            rs = rates[case][k]
            med = statistics.median(rs)
            dup = case in ("duplicates", "dup+conflicts")
            if dup and k == "drain":
                continue
            label = "add of completed keys" if dup and k == "add" else k
            parts.append(f"{label} {med:8.0f}/s ({min(rs):.0f}-{max(rs):.0f}) "
                         f"{med / base[k] * 100:5.1f} %")
        print(f"  {case:13s} " + "   ".join(parts))


if __name__ == "__main__":
    main()
