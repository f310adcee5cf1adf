"""Compliance (erasure by subject): its cost against the plain queue, measured in one run.

    .venv/bin/python bench/bench_compliance.py                     # 3 repetitions
    .venv/bin/python bench/bench_compliance.py --reps 5 --jobs 20000

Every case runs in a fresh child process against one private ``redis-server``; the
cases are interleaved per repetition and the server is flushed before each. A child
adds its jobs with ``add_jobs`` (batches of 1,000: the enqueue rate, timed), then one
worker (concurrency 20, default settings otherwise) drains them; the drain rate is
timed from the first job start to the last job's run (jobs/s).

Cases:
  plain       no-op jobs, compliance not enabled
  installed   a ``ComplianceManager`` on the queue (no retention service), no job names
              a subject (the cost of having it on: its accept and enqueue fragments)
  subjects    the same, every job with a ``subject_id`` (1,000 subjects, round-robin):
              each is marked with it and joins its subject's index
  batched     the same with 10 subjects (100 jobs of each per batch: one customer's
              work added at once)

Each child also counts Redis commands per job (``INFO commandstats``, Lua's inner
commands included) of the bulk enqueue and of the drain, and the CPU time of the worker
and of redis-server per job of the drain.

Then, once: ``erase_subject`` of one subject holding ``--erase`` jobs (half completed,
half waiting) among 10 times as many jobs of other subjects, and an event stream of
every job's events: how long it took, and the longest single Redis command meanwhile
(``SLOWLOG``, every command logged), which says whether it blocks other clients.

Prints a table of medians (min-max); ``--json`` writes every figure. Benchmarks are
not tests: nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cases import child, interleaved, table

from _redis import RedisServer

_CHILD = r"""
import asyncio, json, sys, time
import redis.asyncio as aioredis
from _drain import measured_drain
from kitium_queue import JobQueue
from kitium_queue.features.compliance import ComplianceManager

async def main(url, case, jobs):
    client = aioredis.Redis.from_url(url)
    await client.flushall()
    q = JobQueue("bench-cpl", redis=url, worker={"concurrency": 20, "scheduler": False})
    if case != "plain":
        ComplianceManager(q, run_service=False)
    opts = {}

    def commands(info):  # every command run, Lua's inner ones included
        return sum(v["calls"] for k, v in info.items() if k.startswith("cmdstat_"))

    await q.get_stats()  # connected, scripts loaded: the enqueue alone is counted
    c0 = commands(await client.info("commandstats"))
    t0 = time.perf_counter()
    for start in range(0, jobs, 1000):
        n = min(1000, jobs - start)
        if case in ("subjects", "batched"):
            k = 1000 if case == "subjects" else 10
            batch = [("noop", None, {"subject_id": f"user-{(start + i) % k}"})
                     for i in range(n)]
        else:
            batch = [("noop", None, opts) for _ in range(n)]
        await q.add_jobs(batch)
    enqueue = jobs / (time.perf_counter() - t0)
    enqueue_commands = (commands(await client.info("commandstats")) - c0 - 1) / jobs
    got = await measured_drain(q, jobs)
    got["enqueue"] = enqueue
    got["enqueue_commands"] = enqueue_commands
    await client.aclose()
    print(json.dumps(got))

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""

_ERASE = r"""
import asyncio, json, sys, time
import redis.asyncio as aioredis
from kitium_queue import JobQueue
from kitium_queue.features.compliance import ComplianceManager

async def main(url, erase):
    client = aioredis.Redis.from_url(url)
    await client.flushall()
    q = JobQueue("bench-erase", redis=url, worker={"concurrency": 50, "scheduler": False})
    m = ComplianceManager(q, run_service=False)
    others = erase * 10
    # The erased subject's jobs spread among the others (one in 11), in add order.
    specs = [("noop", None, {"subject_id": "user-erased" if i % 11 == 0 else f"user-{i}"})
             for i in range(erase + others)]
    for start in range(0, len(specs), 1000):
        await q.add_jobs(specs[start:start + 1000])
    # Half the erased subject's jobs completed (with a result), the other half waiting.
    done = asyncio.Event()
    count = 0
    target = (erase + others) // 2

    async def noop(job):
        nonlocal count
        count += 1
        if count >= target:
            done.set()
        return {"ok": True}

    q.process("noop", noop)
    await q.start()
    await asyncio.wait_for(done.wait(), 600)
    await q.worker.stop()
    await client.config_set("slowlog-log-slower-than", 0)
    await client.config_set("slowlog-max-len", 100000)
    await client.slowlog_reset()
    t0 = time.perf_counter()
    report = await m.erase_subject("user-erased")
    took = time.perf_counter() - t0
    log = await client.slowlog_get(100000)
    longest = max(log, key=lambda e: e["duration"]) if log else None
    await q.close()
    await client.aclose()
    print(json.dumps({
        "erased": report.jobs, "events_removed": report.events, "seconds": took,
        "longest_us": longest["duration"] if longest else 0,
        "longest_cmd": (longest["command"].decode(errors="replace")[:60] if longest else ""),
        "commands_logged": len(log),
    }))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""

CASES = ("plain", "installed", "subjects", "batched")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=20_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--erase", type=int, default=2_000, help="jobs of the erased subject")
    ap.add_argument("--json", help="write every figure to this file")
    args = ap.parse_args()
    with RedisServer() as server:
        got = interleaved(server.url, _CHILD, CASES, args.reps, args.jobs)
        erase = child(_ERASE, server.url, str(args.erase))
    table(got, args.reps, args.jobs)
    print(
        f"\nerase_subject: {erase['erased']:,} jobs erased and {erase['events_removed']:,} "
        f"event entries removed in {erase['seconds']:.2f} s; longest single Redis command "
        f"{erase['longest_us'] / 1000:.1f} ms ({erase['longest_cmd']}), "
        f"{erase['commands_logged']:,} commands logged"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"cases": got, "erase": erase}, indent=1))


if __name__ == "__main__":
    main()
