"""Scale-out figures: one partitioned queue on a 1-master vs a 3-master Redis Cluster,
Redis CPU per job on each shard, Redis memory per waiting job, and the capacity plan
they imply (written up in ``docs/scale-out.md``).

    .venv/bin/python bench/bench_cluster.py                 # ~1 min
    .venv/bin/python bench/bench_cluster.py --jobs 50000 --workers 2 --json out.json

What it does, for each topology (1 master, 3 masters; no replicas, no persistence):

1. start the cluster on loopback (``tests/_cluster.py``, the test suite's tooling);
2. fill a ``PartitionedQueue`` of ``--partitions`` partitions (default 3, so each
   master of the 3-master cluster owns one) with ``--jobs`` no-op jobs, ``add_jobs``
   in batches of ``--batch``; Redis CPU of that phase / jobs = *enqueue cost*;
3. pause the queue, start ``--workers`` worker processes (``--concurrency`` slots each),
   resume, and time the drain from resume until nothing is waiting or active;
   Redis CPU of that phase / jobs = *consume cost* (claim + finish + events);
4. ``used_memory`` of the masters before and after ``--memory-jobs`` small waiting jobs.

``redis-server`` CPU is read from ``INFO cpu`` (user + sys) of every master, so the cost
per job holds whatever the machine: it is what a shard spends on each job, and
1 / cost is the most one shard (one core) can sustain. The drain rate on this machine is
bounded by its cores (Redis processes *and* worker processes share them), so the 1-vs-3
throughput comparison shows whether spreading adds overhead, not the speed-up that
separate machines would give; see the capacity plan for how the figures combine.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _load_cluster_tooling() -> Any:
    """``tests/_cluster.py`` (and the ``_redis`` helper it imports) by path."""
    sys.path.insert(0, str(ROOT / "tests"))
    spec = importlib.util.spec_from_file_location("_kq_cluster", ROOT / "tests" / "_cluster.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- worker processes


def _worker_main(url: str, partitions: int, concurrency: int, ready: Any) -> None:
    from kitium_queue import PartitionedQueue

    async def run() -> None:
        pq = PartitionedQueue("bench", partitions=partitions, redis=url, prefix="kqb")

        async def noop(job: Any) -> None:
            return None

        pq.process("noop", noop)
        await pq.start(concurrency=concurrency)
        ready.set()
        await pq.run_worker()  # until SIGTERM

    asyncio.run(run())


# ---------------------------------------------------------------- measurements


def _cpu(cluster: Any) -> dict[int, float]:
    out = {}
    for m in cluster.masters():
        info = cluster.info(m, "cpu")
        out[m.port] = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return out


def _delta(before: dict[int, float], after: dict[int, float]) -> dict[int, float]:
    return {p: after[p] - before[p] for p in after}


async def _fill(url: str, partitions: int, jobs: int, batch: int) -> float:
    from kitium_queue import PartitionedQueue

    pq = PartitionedQueue("bench", partitions=partitions, redis=url, prefix="kqb")
    try:
        t0 = time.perf_counter()
        for start in range(0, jobs, batch):
            await pq.add_jobs([("noop", {"i": i}) for i in range(start, min(jobs, start + batch))])
        return time.perf_counter() - t0
    finally:
        await pq.close()


async def _drain(url: str, partitions: int, jobs: int, workers: int, concurrency: int,
                 cluster: Any) -> dict[str, Any]:
    from kitium_queue import PartitionedQueue

    pq = PartitionedQueue("bench", partitions=partitions, redis=url, prefix="kqb")
    ctx = mp.get_context("spawn")
    procs = []
    try:
        await pq.pause()
        for _ in range(workers):
            ready = ctx.Event()
            p = ctx.Process(target=_worker_main, args=(url, partitions, concurrency, ready))
            p.start()
            procs.append((p, ready))
        for _, ready in procs:
            if not await asyncio.to_thread(ready.wait, 60):
                raise RuntimeError("a worker process did not start within 60 s")
        cpu0 = _cpu(cluster)
        t0 = time.perf_counter()
        await pq.resume()
        while True:
            s = await pq.get_stats()
            if s.waiting == 0 and s.active == 0:
                break
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - t0
        cpu = _delta(cpu0, _cpu(cluster))
        per_part = [s.completed for s in await pq.partition_stats()]
        return {"seconds": elapsed, "jobs_per_s": jobs / elapsed, "redis_cpu_s": cpu,
                "completed_per_partition_kept": per_part}
    finally:
        for p, _ in procs:
            p.terminate()
        for p, _ in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join()
        await pq.close()


async def _memory(url: str, cluster: Any, jobs: int) -> dict[str, Any]:
    from kitium_queue import PartitionedQueue

    pq = PartitionedQueue("mem", partitions=1, redis=url, prefix="kqm")
    try:
        await pq.add_job("noop", {"i": 0})  # the queue's own keys exist before measuring
        before = cluster.used_memory()
        for start in range(1, jobs + 1, 1000):
            stop = min(jobs + 1, start + 1000)
            await pq.add_jobs([("noop", {"i": i}) for i in range(start, stop)])
        after = cluster.used_memory()
        big_before = after
        await pq.add_jobs([("noop", {"blob": "x" * 1000, "i": i}) for i in range(1000)])
        big_after = cluster.used_memory()
        return {
            "jobs": jobs,
            "bytes_per_small_job": (after - before) / jobs,
            "bytes_per_1k_payload_job": (big_after - big_before) / 1000,
        }
    finally:
        await pq.clear(force=True)
        await pq.close()


async def _topology(tooling: Any, masters: int, args: argparse.Namespace) -> dict[str, Any]:
    with tooling.LocalCluster(masters=masters, replicas=0) as cluster:
        url = cluster.url
        cpu0 = _cpu(cluster)
        fill_s = await _fill(url, args.partitions, args.jobs, args.batch)
        enqueue_cpu = _delta(cpu0, _cpu(cluster))
        drain = await _drain(url, args.partitions, args.jobs, args.workers, args.concurrency,
                             cluster)
        mem = await _memory(url, cluster, args.memory_jobs) if masters == 1 else None
        consume_cpu = drain.pop("redis_cpu_s")
        jobs = args.jobs
        return {
            "masters": masters,
            "enqueue_jobs_per_s": jobs / fill_s,
            "drain_jobs_per_s": drain["jobs_per_s"],
            "drain_seconds": drain["seconds"],
            "redis_cpu_us_per_job": {
                "enqueue": 1e6 * sum(enqueue_cpu.values()) / jobs,
                "consume": 1e6 * sum(consume_cpu.values()) / jobs,
            },
            "redis_cpu_share_per_master": {
                str(p): round(c / max(1e-9, sum(consume_cpu.values())), 3)
                for p, c in consume_cpu.items()
            },
            "memory": mem,
        }


def _plan(results: list[dict[str, Any]], target: float, utilization: float) -> dict[str, Any]:
    one = results[0]
    cost = one["redis_cpu_us_per_job"]["enqueue"] + one["redis_cpu_us_per_job"]["consume"]
    per_shard = 1e6 / cost
    usable = per_shard * utilization
    shards = int(-(-target // usable))
    return {
        "redis_cpu_us_per_job_total": cost,
        "max_jobs_per_s_per_shard_at_100pct_cpu": per_shard,
        "planning_utilization": utilization,
        "jobs_per_s_per_shard_planned": usable,
        "target_jobs_per_s": target,
        "shards_needed": shards,
        "partitions_suggested": shards * 2,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jobs", type=int, default=30_000)
    ap.add_argument("--batch", type=int, default=100, help="add_jobs batch size")
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="worker processes")
    ap.add_argument("--concurrency", type=int, default=200, help="slots per worker process")
    ap.add_argument("--memory-jobs", type=int, default=100_000)
    ap.add_argument("--target", type=float, default=100_000, help="jobs/s to plan for")
    ap.add_argument("--utilization", type=float, default=0.5,
                    help="share of a shard's core to plan with (headroom for failover, spikes)")
    ap.add_argument("--json", type=Path, help="write every figure to this file")
    args = ap.parse_args()

    tooling = _load_cluster_tooling()
    results = []
    for masters in (1, 3):
        r = asyncio.run(_topology(tooling, masters, args))
        results.append(r)
        print(f"{masters} master(s): enqueue {r['enqueue_jobs_per_s']:,.0f} jobs/s, "
              f"drain {r['drain_jobs_per_s']:,.0f} jobs/s; redis CPU per job "
              f"enqueue {r['redis_cpu_us_per_job']['enqueue']:.1f} us + consume "
              f"{r['redis_cpu_us_per_job']['consume']:.1f} us; consume CPU share per master "
              f"{r['redis_cpu_share_per_master']}", flush=True)
        if r["memory"]:
            m = r["memory"]
            print(f"  memory: {m['bytes_per_small_job']:.0f} B per small waiting job, "
                  f"{m['bytes_per_1k_payload_job']:.0f} B per job with a 1 KB payload")
    plan = _plan(results, args.target, args.utilization)
    print(f"capacity: {plan['max_jobs_per_s_per_shard_at_100pct_cpu']:,.0f} jobs/s per shard "
          f"at 100% of one core ({plan['redis_cpu_us_per_job_total']:.1f} us/job); planning at "
          f"{args.utilization:.0%}: {plan['jobs_per_s_per_shard_planned']:,.0f} jobs/s per "
          f"shard -> {plan['shards_needed']} shards for {args.target:,.0f} jobs/s "
          f"(partitions: {plan['partitions_suggested']})")
    if args.json:
        args.json.write_text(json.dumps({
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform()},
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "results": results,
            "plan": plan,
        }, indent=2))


if __name__ == "__main__":
    main()
