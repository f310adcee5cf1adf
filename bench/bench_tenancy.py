"""Multi-tenancy: its cost against the plain queue, measured in one run.

    .venv/bin/python bench/bench_tenancy.py                      # 3 repetitions
    .venv/bin/python bench/bench_tenancy.py --reps 5 --jobs 20000

Every case runs in a fresh child process against one private ``redis-server``; the
cases are interleaved per repetition (their order rotating), and the server is flushed
before each. A child adds its jobs with ``add_jobs`` (batches of 1,000: the enqueue
rate, timed), then one worker (concurrency 20, default settings otherwise) drains them;
the drain rate is timed from the first job start to the last job's run (jobs/s).

Cases:
  plain           no-op jobs, tenancy not enabled
  installed       tenancy enabled, no job names a tenant (the cost of having it on)
  quota-1         one tenant with a max_queue_size (never reached), fair dispatch on
  quota-1-nf      the same with fair_dispatch=False: the enqueue cost of the quota check
                  alone (no lane)
  tenants-100     100 tenants (weight 1), jobs round-robin over them, fair dispatch
  tenants-100-nf  the same with fair_dispatch=False (quotas only)
  capped-100      100 tenants, each with max_concurrency 2 and max_queue_size, fair
  capped-100-nq   the same tenants on a queue with enforce_quotas=False
                  (advanced.multi_tenancy.enable_resource_quotas False): tracked and
                  fairly dispatched, quotas not applied

Then, once: the starvation figure. One tenant has 100,000 jobs queued and a worker
(concurrency 20) draining them; a second tenant adds 100 jobs; printed: how long until
all 100 started, and how many of the first tenant's jobs started meanwhile. And the
share of starts of two backlogged tenants weighted 3:1.

``--recount JOBS`` measures instead the recount of a tenant's damaged count over JOBS
jobs (half of them the tenant's): the Redis time of its longest step (``SLOWLOG``),
against one call over every key, as the recount was done before.

Each child also counts Redis commands per job (``INFO commandstats``, Lua's inner
commands included) and the CPU time of the worker and of redis-server per job. Prints a
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
import asyncio, json, sys, time
from _drain import measured_drain
from kitium_queue import JobQueue
from kitium_queue.features.tenancy import TenantRegistry


async def main(url, name, case, jobs):
    q = JobQueue(name, redis=url, worker={"concurrency": 20})
    tenants = []
    if case != "plain":
        reg = TenantRegistry(q, fair_dispatch=not case.endswith("-nf"),
                             enforce_quotas=not case.endswith("-nq"))
        n = 1 if case.startswith("quota-1") else 100
        quota = {}
        if case.startswith("quota-1"):
            quota = {"max_queue_size": jobs * 2}
        elif case.startswith("capped-100"):
            quota = {"max_concurrency": 2, "max_queue_size": jobs}
        if case != "installed":
            for i in range(n):
                await reg.create_tenant({"tenant_id": f"t{i}", "quota": quota})
            tenants = [f"t{i}" for i in range(n)]
        await reg.attach(q)

    def opts(i):
        return {"tenant_id": tenants[i % len(tenants)]} if tenants else {}

    t0 = time.perf_counter()
    for start in range(0, jobs, 1000):
        await q.add_jobs([("noop", {"i": i}, opts(i))
                          for i in range(start, min(jobs, start + 1000))])
    add_rate = jobs / (time.perf_counter() - t0)
    print(json.dumps({**await measured_drain(q, jobs), "add_rate": add_rate}))

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
"""

_FAIRNESS = r"""
import asyncio, json, sys, time
from collections import Counter
from kitium_queue import JobQueue
from kitium_queue.features.tenancy import TenantRegistry


async def main(url, backlog):
    q = JobQueue("fair", redis=url, worker={"concurrency": 20})
    reg = TenantRegistry(q)
    for t, w in (("big", 1), ("small", 1), ("heavy", 3), ("light", 1)):
        await reg.create_tenant({"tenant_id": t, "weight": w})
    for start in range(0, backlog, 5000):
        await q.add_jobs([("noop", None, {"tenant_id": "big"})] * min(5000, backlog - start))
    log = []
    loop = asyncio.get_running_loop()

    async def noop(job):
        log.append((loop.time(), job.options["tenant_id"]))

    q.process("noop", noop)
    await q.start()
    while len(log) < 5000:
        await asyncio.sleep(0.01)
    mark = len(log)
    t0 = loop.time()
    await q.add_jobs([("noop", None, {"tenant_id": "small"})] * 100)
    while sum(1 for _, t in log if t == "small") < 100:
        await asyncio.sleep(0.001)
    last = max(i for i, (_, t) in enumerate(log) if t == "small")
    first = min(i for i, (_, t) in enumerate(log) if t == "small")
    out = {"backlog": backlog, "small_all_started_ms": (log[last][0] - t0) * 1000,
           "small_first_started_ms": (log[first][0] - t0) * 1000,
           "big_started_meanwhile": sum(1 for _, t in log[mark:last + 1] if t == "big")}
    await q.close()
    # Weights 3:1, both backlogged.
    q = JobQueue("weights", redis=url, worker={"concurrency": 20})
    TenantRegistry.enable(q)
    await q.add_jobs([("noop", None, {"tenant_id": "light"})] * 6000)
    await q.add_jobs([("noop", None, {"tenant_id": "heavy"})] * 12000)
    log.clear()
    q.process("noop", noop)
    await q.start()
    while len(log) < 8000:
        await asyncio.sleep(0.01)
    c = Counter(t for _, t in log[500:8000])
    out["weights_3_1_share"] = c["heavy"] / c["light"]
    await q.close()
    print(json.dumps(out))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""

CASES = {
    "plain": "plain queue, tenancy not enabled",
    "installed": "tenancy enabled, no job names a tenant",
    "quota-1": "one tenant with a max_queue_size, fair dispatch",
    "quota-1-nf": "one tenant with a max_queue_size, fair_dispatch=False",
    "tenants-100": "100 tenants, jobs round-robin, fair dispatch",
    "tenants-100-nf": "100 tenants, fair_dispatch=False (quotas only)",
    "capped-100": "100 tenants, max_concurrency 2 + max_queue_size each, fair",
    "capped-100-nq": "the same, enforce_quotas=False (tracked, fair, not limited)",
}


_RECOUNT = r"""
import asyncio, json, sys, time
import redis.asyncio as aioredis
from kitium_queue import JobQueue
from kitium_queue.features.tenancy import TenantRegistry
from kitium_queue.features.tenancy import keys as tk
from kitium_queue.features.tenancy.install import recount


async def steps(q, client, raw, **kw):
    # One recount of the damaged count; Redis µs of its longest and median step.
    await raw.hset(tk.tenant(q.keys, "a"), "n", "garbage")
    await raw.slowlog_reset()
    await raw.config_resetstat()
    t0 = time.perf_counter()
    n = await recount(client, q.keys, "a", **kw)
    wall = time.perf_counter() - t0
    # Script calls only: the commands a script runs are logged too, in microseconds,
    # below the 0.5 ms threshold; every step takes longer.
    log = [e for e in await raw.slowlog_get(100000)
           if e["command"].split(b" ", 1)[0].upper() in (b"EVALSHA", b"EVAL")]
    took = sorted(e["duration"] for e in log)
    st = (await raw.info("commandstats")).get("cmdstat_evalsha", {})
    return {"count": n, "steps": st.get("calls", 0), "logged_steps": len(took),
            "wall_s": wall, "max_step_us": took[-1], "median_step_us": took[len(took) // 2],
            "redis_total_ms": st.get("usec", 0) / 1000}


async def main(url, jobs):
    q = JobQueue("recount", redis=url)
    reg = TenantRegistry(q)
    await reg.create_tenant({"tenant_id": "a"})
    await reg.create_tenant({"tenant_id": "b"})
    for i in range(0, jobs, 5000):
        await q.add_jobs([("x", None, {"tenant_id": "ab"[k % 2]})
                          for k in range(i, min(jobs, i + 5000))])
    client = await q.client()
    raw = aioredis.Redis.from_url(url)
    await raw.config_set("slowlog-log-slower-than", 500)
    await raw.config_set("slowlog-max-len", 100000)
    keys = await raw.dbsize()
    out = {"jobs": jobs, "keys": keys,
           "steps": await steps(q, client, raw),
           # One step over every key (what the single-call recount did).
           "one_call": await steps(q, client, raw, per_scan=10000, scans=100)}
    print(json.dumps(out))


asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def recount_cost(jobs: int) -> None:
    """The recount of a damaged tenant count over ``jobs`` jobs (half of them the
    tenant's): in bounded steps, and in one call over every key, as it was done."""
    with RedisServer() as srv:
        r = _child(_RECOUNT, srv.url, str(jobs))
    for how, f in (("bounded steps", r["steps"]), ("one call (before)", r["one_call"])):
        print(f"recount over {r['keys']:,} keys ({r['jobs']:,} jobs), {how}: count "
              f"{f['count']:,}, {f['steps']} script call(s), longest "
              f"{f['max_step_us'] / 1000:.1f} ms, median {f['median_step_us'] / 1000:.1f} ms "
              f"of Redis; {f['redis_total_ms']:.0f} ms of Redis in all, {f['wall_s']:.2f} s wall")


def _child(source: str, *args: str) -> dict[str, Any]:
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join((str(ROOT / "src"), str(ROOT / "bench")))}
    out = subprocess.run(
        [sys.executable, "-c", source, *args],
        check=True, capture_output=True, text=True, env=env, timeout=900,
    ).stdout
    figures: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jobs", type=int, default=20_000, help="jobs per case")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--backlog", type=int, default=100_000,
                    help="jobs of the busy tenant in the starvation run")
    ap.add_argument("--only", default=",".join(CASES), help="comma-separated cases")
    ap.add_argument("--json", type=Path, default=None, help="write every figure here")
    ap.add_argument("--recount", type=int, default=0, metavar="JOBS",
                    help="only measure the recount of a damaged tenant count over JOBS jobs")
    args = ap.parse_args()
    if args.recount:
        recount_cost(args.recount)
        return
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
                r = _child(_CHILD, srv.url, f"bt-{case}-{rep}", case, str(args.jobs))
                runs[case].append(r)
                print(f"rep {rep + 1} {case:15s} drain {r['rate']:8.0f} jobs/s  add "
                      f"{r['add_rate']:8.0f} jobs/s  {r['commands']:.1f} commands/job  "
                      f"CPU/job: worker {r['worker_cpu_us']:.0f} µs, redis "
                      f"{r['redis_cpu_us']:.0f} µs", flush=True)
        client.flushall()
        fair = _child(_FAIRNESS, srv.url, str(args.backlog))
    print(f"\n{args.reps} repetitions, medians (min-max); machine: {platform.machine()}, "
          f"{os.cpu_count()} CPUs, python {platform.python_version()}")
    base = statistics.median(r["rate"] for r in runs["plain"]) if "plain" in runs else None
    base_add = statistics.median(r["add_rate"] for r in runs["plain"]) if "plain" in runs else None
    summary: dict[str, Any] = {}
    for case, rs in runs.items():
        rates = [r["rate"] for r in rs]
        adds = [r["add_rate"] for r in rs]
        med, add = statistics.median(rates), statistics.median(adds)
        rel = f"{med / base * 100:5.1f} %" if base else ""
        rel_add = f"{add / base_add * 100:5.1f} %" if base_add else ""
        cmd = statistics.median(r["commands"] for r in rs)
        wcpu = statistics.median(r["worker_cpu_us"] for r in rs)
        rcpu = statistics.median(r["redis_cpu_us"] for r in rs)
        print(f"  {case:15s} drain {med:8.0f} ({min(rates):.0f}-{max(rates):.0f}) {rel} | "
              f"add {add:8.0f} ({min(adds):.0f}-{max(adds):.0f}) {rel_add} | {cmd:.1f} "
              f"commands/job | CPU/job worker {wcpu:.0f} µs, redis {rcpu:.0f} µs   "
              f"{CASES[case]}")
        summary[case] = {"rate": med, "min": min(rates), "max": max(rates), "add_rate": add,
                         "add_min": min(adds), "add_max": max(adds), "commands_per_job": cmd,
                         "worker_cpu_us_per_job": wcpu, "redis_cpu_us_per_job": rcpu,
                         "vs_plain": None if not base else med / base,
                         "add_vs_plain": None if not base_add else add / base_add, "runs": rs}
    print(f"\nstarvation: with {fair['backlog']:,} jobs of one tenant queued and draining, "
          f"100 jobs of another all started {fair['small_all_started_ms']:.0f} ms after "
          f"they were added (first after {fair['small_first_started_ms']:.1f} ms); the busy "
          f"tenant started {fair['big_started_meanwhile']} jobs meanwhile")
    print(f"weights 3:1, both backlogged: share of starts {fair['weights_3_1_share']:.3f} : 1")
    summary["fairness"] = fair
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
