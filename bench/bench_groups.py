"""FIFO message groups: their cost against the plain queue, measured in one run.

    .venv/bin/python bench/bench_groups.py                       # 3 repetitions
    .venv/bin/python bench/bench_groups.py --reps 5 --jobs 20000 --serial-jobs 5000

Every case runs in a fresh child process against one private ``redis-server``; the
cases are interleaved per repetition, so load on the machine hits all of them alike.
The server is flushed before each case and the order of the cases rotates from one
repetition to the next. A child fills its queue with ``add_jobs`` (batches of 1,000,
untimed), then one worker
(concurrency 20, default settings otherwise) drains it; the rate is timed from the
first job start to the last job's run (jobs/s).

Cases:
  plain          no-op jobs, FIFO groups not enabled
  installed      FIFOQueueManager(queue) enabled, no job in a group (the cost of
                 having the feature on)
  groups-1000    FIFOQueueManager enabled, the jobs spread round-robin over 1,000 groups
  serial         one group, one job at a time (group_concurrency 1), no-op
  serial-ht      the same with FIFOQueueManager(queue, high_throughput=True)
  serial-c1      one group, worker concurrency 1 (one pump lane: one round trip per job)

Each child also counts, per job, its client round trips (one per request write: a
command or a whole pipeline), the Redis commands the server ran (``INFO commandstats``,
Lua's inner commands included) and the CPU time of the worker process and of
redis-server (less sensitive than the rate to other work on the machine). Prints a
table of medians (min-max); ``--json`` writes every figure. Benchmarks are not tests:
nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis

from _redis import RedisServer

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import asyncio, json, resource, sys, time
import redis.asyncio.connection as aconn
from kitium_queue import JobQueue
from kitium_queue.features.groups import FIFOQueueManager

SENDS = [0]
_orig = aconn.AbstractConnection.send_packed_command

async def _counted(self, *a, **kw):
    SENDS[0] += 1
    return await _orig(self, *a, **kw)

aconn.AbstractConnection.send_packed_command = _counted


def commands(info):
    return sum(v["calls"] for k, v in info.items() if k.startswith("cmdstat_"))


def own_cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def redis_cpu(client):
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def main(url, name, case, jobs):
    q = JobQueue(name, redis=url, worker={"concurrency": 1 if case == "serial-c1" else 20})
    if case != "plain":
        FIFOQueueManager(q, high_throughput=case == "serial-ht")

    def group(i):
        if case == "groups-1000":
            return {"message_group_id": f"g{i % 1000}"}
        if case.startswith("serial"):
            return {"message_group_id": "serial"}
        return {}

    client = await q.client()
    fcmd0, frcpu0 = commands(await client.info("commandstats")), await redis_cpu(client)
    for start in range(0, jobs, 1000):
        await q.add_jobs([("noop", {"i": i}, group(i))
                          for i in range(start, min(jobs, start + 1000))])
    fill_cmds = commands(await client.info("commandstats")) - fcmd0 - 1
    fill_rcpu = await redis_cpu(client) - frcpu0
    done = asyncio.Event()
    count = 0
    first = last = 0.0

    async def noop(job):
        nonlocal count, first, last
        if count == 0:
            first = time.perf_counter()
        count += 1
        if count == jobs:
            last = time.perf_counter()
            done.set()

    q.process("noop", noop)
    cmd0 = commands(await client.info("commandstats"))
    rcpu0, cpu0 = await redis_cpu(client), own_cpu()
    sends0 = SENDS[0]
    await q.start()
    await done.wait()
    sends = SENDS[0] - sends0
    cpu, rcpu = own_cpu() - cpu0, await redis_cpu(client) - rcpu0
    cmds = commands(await client.info("commandstats")) - cmd0 - 2
    await q.close()
    print(json.dumps({"rate": (jobs - 1) / (last - first), "round_trips": sends / jobs,
                      "commands": cmds / jobs, "worker_cpu_us": cpu / jobs * 1e6,
                      "redis_cpu_us": rcpu / jobs * 1e6,
                      "fill_commands": fill_cmds / jobs,
                      "fill_redis_cpu_us": fill_rcpu / jobs * 1e6}))

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
"""

CASES = {
    "plain": "plain queue, FIFO groups not enabled",
    "installed": "FIFOQueueManager enabled, no group used",
    "groups-1000": "1,000 groups (jobs round-robin)",
    "serial": "one group, one job at a time",
    "serial-ht": "one group, high_throughput=True",
    "serial-c1": "one group, worker concurrency 1",
}


def _run(url: str, name: str, case: str, jobs: int, src: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, url, name, case, str(jobs)],
        check=True, capture_output=True, text=True, env=env, timeout=900,
    ).stdout
    figures: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return figures


def _med(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jobs", type=int, default=20_000, help="jobs per drain case")
    ap.add_argument("--serial-jobs", type=int, default=5_000, help="jobs per serial case")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", default=",".join(CASES), help="comma-separated cases")
    ap.add_argument("--json", type=Path, default=None, help="write every figure here")
    ap.add_argument("--src", type=Path, default=ROOT / "src",
                    help="the package source to measure (e.g. another revision exported "
                         "with git archive)")
    args = ap.parse_args()
    cases = [c for c in args.only.split(",") if c]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
    runs: dict[str, list[dict[str, float]]] = {c: [] for c in cases}
    with RedisServer() as srv:
        client = redis.Redis.from_url(srv.url)
        for rep in range(args.reps):
            for case in cases[rep % len(cases):] + cases[:rep % len(cases)]:
                client.flushall()
                n = args.serial_jobs if case.startswith("serial") else args.jobs
                r = _run(srv.url, f"bg-{case}-{rep}", case, n, args.src)
                runs[case].append(r)
                print(f"rep {rep + 1} {case:12s} {r['rate']:9.0f} jobs/s  "
                      f"{r['round_trips']:.3f} round trips/job  "
                      f"{r['commands']:.1f} commands/job  CPU/job: worker "
                      f"{r['worker_cpu_us']:.0f} µs, redis {r['redis_cpu_us']:.0f} µs; "
                      f"enqueue: {r['fill_commands']:.1f} commands/job, redis "
                      f"{r['fill_redis_cpu_us']:.1f} µs/job",
                      flush=True)
    base = _med([r["rate"] for r in runs["plain"]]) if "plain" in runs else None
    print(f"\n{args.reps} repetitions, medians (min-max); machine: {platform.machine()}, "
          f"{os.cpu_count()} CPUs, python {platform.python_version()}")
    summary: dict[str, Any] = {}
    for case, rs in runs.items():
        rates = [r["rate"] for r in rs]
        med = _med(rates)
        rel = f"{med / base * 100:5.1f} % of plain" if base else ""
        rt, cmd = _med([r["round_trips"] for r in rs]), _med([r["commands"] for r in rs])
        wcpu = _med([r["worker_cpu_us"] for r in rs])
        rcpu = _med([r["redis_cpu_us"] for r in rs])
        fcmd, frcpu = (_med([r[k] for r in rs]) for k in ("fill_commands", "fill_redis_cpu_us"))
        print(f"  {case:12s} {med:9.0f} jobs/s ({min(rates):.0f}-{max(rates):.0f})  {rel}  "
              f"{rt:.3f} round trips/job  {cmd:.1f} commands/job  CPU/job: worker "
              f"{wcpu:.0f} µs, redis {rcpu:.0f} µs; enqueue {fcmd:.1f} commands/job, "
              f"redis {frcpu:.1f} µs/job   {CASES[case]}")
        summary[case] = {"rate": med, "min": min(rates), "max": max(rates),
                         "round_trips_per_job": rt, "commands_per_job": cmd,
                         "worker_cpu_us_per_job": wcpu, "redis_cpu_us_per_job": rcpu,
                         "enqueue_commands_per_job": fcmd,
                         "enqueue_redis_cpu_us_per_job": frcpu,
                         "vs_plain": None if not base else med / base, "runs": rs}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
