"""Work that grows (issue 18, item 6): the cost per job and the admin calls at 10 k, 1 M
and 5 M waiting jobs, 1 M delayed jobs, 100 k schedules and a DLQ of 1 M.

    .venv/bin/python bench/bench_growth.py                    # the full run (about 30 min)
    .venv/bin/python bench/bench_growth.py --small            # a smoke run (under a minute)
    .venv/bin/python bench/bench_growth.py --waiting 10000,1000000 --delayed 0 --json out.json

Each case runs on a fresh private ``redis-server`` (no persistence, ``SLOWLOG`` at 1 ms,
``LATENCY`` monitor at 10 ms; ``--pin``: on core 0, this process on core 1). Per case:

* **memory per job**: ``used_memory`` delta over the jobs put in (``add_jobs``, chunks of
  1,000, four calls in flight);
* **drain rate**: one in-process worker (concurrency 20) drains ``--sample`` jobs from
  the head of the backlog (the rest stays): jobs/s from the first start to the last
  completion; ``--reps`` drains per case (the backlog topped up between them), medians;
* **claim cost**: Redis time per claimed job over that drain (``INFO commandstats``: µs
  of EVALSHA/EVAL per job, the commands run inside the scripts included), the Redis
  process's CPU time per job (``INFO cpu``: unlike the first, not inflated when another
  process preempts Redis on a shared core), and Redis commands per job;
  and, per command run inside them, µs per job (where the script time goes);
* **enqueue→start latency**: while the worker drains, a producer adds 200 jobs/s at
  priority 10 (ahead of the backlog, behind nothing): p50 / p99 from ``add_job`` to the
  processor's start;
* **admin calls**: ``get_stats``, ``get_jobs_by_status`` (100 and 100,000), ``list_jobs``
  page 50 and its next page, ``get_dlq_jobs(100)``, ``health_check``, ``get_schedules``,
  ``replay_dlq(10,000)``, ``drain`` and ``clear`` at the end: for each, the longest
  single Redis command it caused (``SLOWLOG``, µs) and its wall time. The target: no
  command above 50 ms at any size (``LATENCY LATEST`` is printed too).

``--bracket`` runs the first waiting case again at the end and compares every case with
the mean of its two runs (the machine's speed drifts over a half-hour run; the two
baseline figures show by how much).

The targets (issue 18): cost per job within 20 % of the 10 k figure; no admin call
blocking Redis for more than 50 ms. Prints a table; ``--json`` writes every figure.
Benchmarks are not tests: nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from _redis import RedisServer  # noqa: E402
from kitium_queue import JobQueue  # noqa: E402

QUEUE = "growth"
#: Pin Redis and this process to different cores (``--pin``).
PIN = False
PREFIX = "kqg"


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(len(v) * p / 100))]


async def _fill(q: JobQueue, n: int, opts: dict[str, Any] | None = None) -> float:
    """Put ``n`` no-op jobs in; returns jobs/s."""
    t0 = time.perf_counter()
    sem = asyncio.Semaphore(4)

    async def chunk(lo: int) -> None:
        async with sem:
            batch = [("noop", {"i": i}, opts or {}) for i in range(lo, min(n, lo + 1000))]
            await q.add_jobs(batch)

    await asyncio.gather(*(chunk(lo) for lo in range(0, n, 1000)))
    return n / max(1e-9, time.perf_counter() - t0)


async def _script_stats(r: aioredis.Redis) -> tuple[int, int, int]:
    """(script calls, script µs, all commands) from INFO commandstats."""
    stats = await r.info("commandstats")
    calls = usec = total = 0
    for k, v in stats.items():
        name = k.removeprefix("cmdstat_")
        if name in ("info", "config|resetstat", "slowlog|reset", "slowlog|get", "flushall"):
            continue
        total += int(v["calls"])
        if name in ("evalsha", "eval"):
            calls += int(v["calls"])
            usec += int(v["usec"])
    return calls, usec, total


async def _redis_cpu(r: aioredis.Redis) -> float:
    """CPU seconds the redis-server process has used (user + system). Unlike the µs of
    ``commandstats`` (wall time), time Redis spent preempted by another process on its
    core does not count."""
    info = await r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _command_usec(r: aioredis.Redis) -> dict[str, int]:
    """µs spent per command name (INFO commandstats)."""
    stats = await r.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["usec"]) for k, v in stats.items()}


async def _blocking(r: aioredis.Redis, call: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    """Run ``call``; the longest single Redis command it caused (SLOWLOG, µs)."""
    await r.slowlog_reset()
    t0 = time.perf_counter()
    await call()
    wall = time.perf_counter() - t0
    log = await r.slowlog_get(128)
    worst = max((int(e["duration"]) for e in log), default=0)
    cmd = ""
    for e in log:
        if int(e["duration"]) == worst:
            raw = e.get("command", b"")
            cmd = (raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw))[:60]
    return {"max_command_us": worst, "wall_ms": round(wall * 1000, 2), "command": cmd}


async def _drain_sample(
    q: JobQueue, r: aioredis.Redis, sample: int, latency: bool
) -> dict[str, Any]:
    """Drain ``sample`` jobs with one in-process worker; claim cost and latency."""
    starts: list[float] = []
    lat: list[float] = []
    done = asyncio.Event()
    counted = [0]

    async def noop(job: Any) -> None:
        now = time.time()
        if isinstance(job.data, dict) and "t" in job.data:
            lat.append(now - job.data["t"])
            return
        starts.append(now)
        counted[0] += 1
        if counted[0] >= sample:
            done.set()

    q.process("noop", noop)
    await r.config_resetstat()
    c0 = await _script_stats(r)
    u0 = await _command_usec(r)
    cpu0 = await _redis_cpu(r)
    stop = asyncio.Event()

    async def produce() -> None:
        while not stop.is_set():
            await q.add_job("noop", {"t": time.time()}, priority=10)
            await asyncio.sleep(0.005)

    await q.start(concurrency=20)
    prod = asyncio.ensure_future(produce()) if latency else None
    t0 = time.time()
    try:
        await asyncio.wait_for(done.wait(), 600)
    finally:
        stop.set()
        if prod is not None:
            await prod
        await q.worker.stop(timeout_ms=2000)
    t1 = time.time()
    c1 = await _script_stats(r)
    u1 = await _command_usec(r)
    cpu1 = await _redis_cpu(r)
    jobs = counted[0] + len(lat)
    # Where the script time goes: µs per job of each command run inside the scripts
    # (what grows with the size of the keyspace and of the sets).
    inner = {
        name: round((us - u0.get(name, 0)) / max(1, jobs), 2)
        for name, us in u1.items()
        if name not in ("evalsha", "eval", "info", "config|resetstat")
    }
    top = dict(sorted(inner.items(), key=lambda kv: -kv[1])[:10])
    first = min(starts) if starts else t0
    return {
        "drain_jobs_per_s": round(counted[0] / max(1e-9, t1 - first), 0),
        "redis_script_us_per_job": round((c1[1] - c0[1]) / max(1, jobs), 2),
        "redis_commands_per_job": round((c1[2] - c0[2]) / max(1, jobs), 2),
        "redis_cpu_us_per_job": round((cpu1 - cpu0) * 1e6 / max(1, jobs), 2),
        "latency_p50_ms": round((_pct(lat, 50) or 0) * 1000, 3) if lat else None,
        "latency_p99_ms": round((_pct(lat, 99) or 0) * 1000, 3) if lat else None,
        "latency_samples": len(lat),
        "inner_us_per_job": top,
    }


async def _admin(q: JobQueue, r: aioredis.Redis, *, destructive: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    out["get_stats"] = await _blocking(r, q.get_stats)
    out["get_jobs_by_status(waiting, 100)"] = await _blocking(
        r, lambda: q.get_jobs_by_status("waiting", 100)
    )
    out["get_jobs_by_status(waiting, 100000)"] = await _blocking(
        r, lambda: q.get_jobs_by_status("waiting", 100_000)
    )
    out["get_jobs_by_status(delayed, 100)"] = await _blocking(
        r, lambda: q.get_jobs_by_status("delayed", 100)
    )

    async def two_pages() -> None:
        page = await q.list_jobs("waiting", limit=50)
        if page.next_cursor:
            await q.list_jobs("waiting", limit=50, cursor=page.next_cursor)

    out["list_jobs(50) + next page"] = await _blocking(r, two_pages)
    out["get_dlq_jobs(100)"] = await _blocking(r, lambda: q.get_dlq_jobs(100))
    out["health_check"] = await _blocking(r, q.health_check)
    out["get_schedules"] = await _blocking(r, q.get_schedules)
    if destructive:
        out["replay_dlq(10000)"] = await _blocking(r, lambda: q.replay_dlq(10_000))
        out["drain"] = await _blocking(r, q.drain)
        out["clear"] = await _blocking(r, lambda: q.clear(force=True))
    latest = await r.execute_command("LATENCY", "LATEST")
    out["latency_latest"] = [list(map(str, x)) for x in latest]
    return out


async def _to_dlq(r: aioredis.Redis, q: JobQueue, n: int) -> None:
    """Move ``n`` waiting jobs to the DLQ in script calls of 1,000 (as dead-lettering
    would leave them: st=dlq with a reason), quicker than failing them one by one."""
    lua = """
    local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
    for i = 1, #ids do
      redis.call('HSET', ARGV[2] .. ids[i], 'st', 'dlq', 'e', 'bench', 'f', ARGV[3])
      redis.call('ZADD', KEYS[2], ARGV[3], ids[i])
    end
    if #ids > 0 then redis.call('ZREM', KEYS[1], unpack(ids)) end
    return #ids
    """
    moved = 0
    while moved < n:
        got = await r.eval(
            lua,
            2,
            q.keys.wait,
            q.keys.dlq,
            min(1000, n - moved),
            q.keys.job(""),
            int(time.time() * 1000),
        )
        if not got:
            break
        moved += int(got)


def _median(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over the drains (the per-command breakdown and the
    latency percentiles of the drain whose script time is the median one)."""
    mid = sorted(samples, key=lambda x: x["redis_script_us_per_job"])[len(samples) // 2]
    out = dict(mid)
    for key in ("drain_jobs_per_s", "redis_script_us_per_job", "redis_cpu_us_per_job",
                "redis_commands_per_job"):  # fmt: skip
        out[key] = statistics.median(x[key] for x in samples)
        out[key + "_all"] = [x[key] for x in samples]
    return out


async def _case(kind: str, n: int, sample: int, latency: bool, reps: int) -> dict[str, Any]:
    with RedisServer(
        "--slowlog-log-slower-than",
        "1000",
        "--slowlog-max-len",
        "256",
        "--latency-monitor-threshold",
        "10",
    ) as srv:
        if PIN and srv.pid is not None:
            # Redis on one core, this process (producer and worker) on the other.
            os.sched_setaffinity(srv.pid, {0})
            os.sched_setaffinity(0, {1})
        r = aioredis.Redis.from_url(srv.url)
        q = JobQueue(QUEUE, redis=srv.url, prefix=PREFIX, worker={"concurrency": 20})
        try:
            m0 = int((await r.info("memory"))["used_memory"])
            row: dict[str, Any] = {"case": kind, "size": n}
            if kind == "waiting":
                row["fill_jobs_per_s"] = round(await _fill(q, n))
            elif kind == "delayed":
                row["fill_jobs_per_s"] = round(await _fill(q, n, {"delay": 3_600_000}))
            elif kind == "dlq":
                row["fill_jobs_per_s"] = round(await _fill(q, n))
                await _to_dlq(r, q, n)
            elif kind == "schedules":
                t0 = time.perf_counter()
                sem = asyncio.Semaphore(50)

                async def one(i: int) -> None:
                    async with sem:
                        await q.schedule_every("noop", {"s": i}, 86_400_000, schedule_id=f"s{i}")

                await asyncio.gather(*(one(i) for i in range(n)))
                row["fill_jobs_per_s"] = round(n / (time.perf_counter() - t0))
            m1 = int((await r.info("memory"))["used_memory"])
            row["bytes_per_item"] = round((m1 - m0) / max(1, n))
            row["admin"] = await _admin(q, r, destructive=False)
            # ``reps`` drains of ``sample`` jobs each; the figures are their medians (one
            # drain lasts about a second, and this machine's speed drifts by a third
            # between seconds). The waiting backlog is topped up to its size before each
            # drain after the first; the other cases get the jobs drained next to them.
            samples = []
            for rep in range(reps):
                if kind != "waiting":
                    await _fill(q, sample)
                elif rep:
                    await _fill(q, min(sample, n))
                samples.append(
                    await _drain_sample(
                        q, r, min(sample, n) if kind == "waiting" else sample, latency
                    )
                )
            row.update(_median(samples))
            row["admin_end"] = await _admin(q, r, destructive=True)
            return row
        finally:
            await q.close()
            await r.aclose()


def _print(rows: list[dict[str, Any]]) -> None:
    head = (
        "case",
        "size",
        "B/item",
        "drain/s",
        "script µs/job",
        "cmds/job",
        "lat p50 ms",
        "lat p99 ms",
        "worst admin cmd µs (call)",
    )
    print(" | ".join(head))
    for r in rows:
        worst = ("", 0)
        for part in ("admin", "admin_end"):
            for name, v in r[part].items():
                if isinstance(v, dict) and v["max_command_us"] > worst[1]:
                    worst = (name, v["max_command_us"])
        print(
            " | ".join(
                str(x)
                for x in (
                    r["case"],
                    f"{r['size']:,}",
                    r["bytes_per_item"],
                    r["drain_jobs_per_s"],
                    r["redis_script_us_per_job"],
                    r["redis_commands_per_job"],
                    r["latency_p50_ms"],
                    r["latency_p99_ms"],
                    f"{worst[1]} ({worst[0]})",
                )
            )
        )


def _sizes(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip() and int(x) > 0]


async def main(args: argparse.Namespace) -> None:
    global PIN
    PIN = args.pin and hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2
    plan = [("waiting", n) for n in _sizes(args.waiting)]
    plan += [("delayed", n) for n in _sizes(args.delayed)]
    plan += [("schedules", n) for n in _sizes(args.schedules)]
    plan += [("dlq", n) for n in _sizes(args.dlq)]
    if args.bracket and plan and plan[0][0] == "waiting":
        # The baseline again at the end: the machine's speed drifts over a long run, and
        # the ratios then compare every case with the mean of the two baseline runs.
        plan.append(plan[0])
    rows = []
    for kind, n in plan:
        t0 = time.perf_counter()
        row = await _case(kind, n, args.sample, not args.no_latency, args.reps)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(
            f"[{kind} {n:,}] drain {row['drain_jobs_per_s']}/s, script "
            f"{row['redis_script_us_per_job']} µs/job, Redis CPU "
            f"{row['redis_cpu_us_per_job']} µs/job, {row['bytes_per_item']} B/item, "
            f"{row['seconds']} s",
            flush=True,
        )
    print()
    _print(rows)
    print("\nµs per job of the commands run inside the scripts (the largest):")
    for r in rows:
        parts = ", ".join(f"{k} {v}" for k, v in r["inner_us_per_job"].items())
        print(f"  {r['case']} {r['size']:,}: {parts}")
    base = next((r for r in rows if r["case"] == "waiting"), None)
    if base is not None:
        bases = [base]
        if args.bracket and len(rows) > 1 and rows[-1]["size"] == base["size"]:
            bases.append(rows[-1])
            print(
                f"\nbaseline drift: script {base['redis_script_us_per_job']} → "
                f"{rows[-1]['redis_script_us_per_job']} µs/job, Redis CPU "
                f"{base['redis_cpu_us_per_job']} → {rows[-1]['redis_cpu_us_per_job']} µs/job"
            )
        script0 = statistics.mean(b["redis_script_us_per_job"] for b in bases)
        cpu0 = statistics.mean(b["redis_cpu_us_per_job"] for b in bases)
        for r in rows:
            r["script_us_vs_first_waiting"] = round(
                r["redis_script_us_per_job"] / max(1e-9, script0), 2
            )
            r["cpu_us_vs_first_waiting"] = round(r["redis_cpu_us_per_job"] / max(1e-9, cpu0), 2)
        what = "the first waiting case" + (" (mean of its two runs)" if len(bases) > 1 else "")
        for label, key in (("script µs", "script_us"), ("Redis CPU µs", "cpu_us")):
            print(
                f"\n{label}/job relative to {what}: "
                + ", ".join(
                    f"{r['case']} {r['size']:,}: {r[key + '_vs_first_waiting']}" for r in rows
                )
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
        print(f"figures written to {args.json}")
    med = statistics.median([r["drain_jobs_per_s"] for r in rows]) if rows else 0
    print(f"median drain rate over the cases: {med:,.0f} jobs/s")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--waiting", default="10000,1000000,5000000")
    p.add_argument("--delayed", default="1000000")
    p.add_argument("--schedules", default="100000")
    p.add_argument("--dlq", default="1000000")
    p.add_argument("--sample", type=int, default=20_000, help="jobs drained per case")
    p.add_argument("--no-latency", action="store_true")
    p.add_argument("--reps", type=int, default=3, help="drains per case (medians reported)")
    p.add_argument(
        "--small",
        action="store_true",
        help="smoke sizes: 2,000 and 20,000 waiting; 20,000 delayed; 2,000 "
        "schedules; 20,000 in the DLQ; 2,000 drained",
    )
    p.add_argument(
        "--bracket",
        action="store_true",
        help="run the first waiting case again at the end; ratios against the mean of both",
    )
    p.add_argument("--json", default="")
    p.add_argument(
        "--pin",
        action="store_true",
        help="pin redis-server to core 0 and this process to core 1",
    )
    args = p.parse_args(argv)
    if args.small:
        args.waiting, args.delayed, args.schedules, args.dlq = (
            "2000,20000",
            "20000",
            "2000",
            "20000",
        )
        args.sample = 2000
    return args


if __name__ == "__main__":
    asyncio.run(main(parse()))
