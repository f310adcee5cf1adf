"""Multi-region queues: what an enqueue costs with replication (async, sync) against the
plain queue, and replication's throughput and lag under the drain benchmark's load,
measured in one run.

    PYTHONPATH=src .venv/bin/python bench/bench_regions.py               # 3 repetitions
    PYTHONPATH=src .venv/bin/python bench/bench_regions.py --reps 5 --jobs 20000

Three private ``redis-server`` processes (no persistence) stand for three regions, all
on this machine (so network latency between regions is not part of the figures: add
your RTT per sync acknowledgement). Every case runs in a fresh queue; the regions'
background work (health checks, leases, the replicator) runs in a separate process
(``_region_daemon.py``), as in a deployment where the replicator is one worker process
among many, and the measuring process uses ``background=False``.

Enqueue cases (``--adds`` jobs each; one at a time, awaited; and from 100 coroutines):
  plain    a ``JobQueue`` on region 0
  async    ``GlobalQueueManager``, asynchronous replication (the replicator runs)
  sync1    synchronous replication, ``min_acks=1``
  sync2    synchronous replication, ``min_acks=2`` (every other region)

Drain case (``--jobs`` no-op jobs, concurrency 20, the drain benchmark's load): the jobs
are added with ``add_jobs`` (untimed) and drained, on a plain queue and on the primary
of a ``GlobalQueueManager`` with asynchronous replication to two secondaries. Figures:
drain jobs/s; replication: outbox entries applied per second per secondary (adds and
outcomes) from the first add until both secondaries caught up; the largest lag seen
(entries and ms, sampled every 100 ms); how long after the last completion both
secondaries had applied everything.

Benchmarks are not tests: nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis

from _redis import RedisServer
from kitium_queue import JobQueue
from kitium_queue.features.regions import GlobalQueueManager

ADD_CASES = ("plain", "async", "sync1", "sync2")
NAMES = ("us-east-1", "eu-west-1", "ap-southeast-1")


def _config(
    urls: list[str], name: str, mode: str, min_acks: int = 1, background: bool = False
) -> dict[str, Any]:
    return {
        "background": background,
        "name": name,
        "regions": [
            {"region": n, "redis": u, "is_primary": i == 0, "priority": i or 100}
            for i, (n, u) in enumerate(zip(NAMES, urls, strict=True))
        ],
        "replication": {"enabled": True, "mode": mode, "min_acks": min_acks},
        "failover": {"enabled": True, "timeout_ms": 5000},
    }


class Daemon:
    """``_region_daemon.py`` for one queue: started first, so it elects the primary."""

    def __init__(self, config: dict[str, Any]) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).with_name("_region_daemon.py")),
                json.dumps({**config, "background": True}),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith(b"ready"):
            raise RuntimeError(f"region daemon did not start: {line!r}")

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


async def _target(case: str, urls: list[str], name: str) -> tuple[Any, Any]:
    if case == "plain":
        q = JobQueue(name, redis=urls[0])
        return q, None
    mode = "async" if case == "async" else "sync"
    cfg = _config(urls, name, mode, 2 if case == "sync2" else 1)
    daemon = Daemon(cfg)
    m = GlobalQueueManager()
    await m.initialize(cfg)
    return m, daemon


async def _adds(case: str, urls: list[str], n: int) -> dict[str, float]:
    target, daemon = await _target(case, urls, f"ba-{case}-{uuid.uuid4().hex[:6]}")
    for i in range(50):  # warm-up: connections, scripts
        await target.add_job("noop", {"i": i})
    lat: list[float] = []
    t0 = time.perf_counter()
    for i in range(n):
        s = time.perf_counter()
        await target.add_job("noop", {"i": i})
        lat.append((time.perf_counter() - s) * 1000)
    seq = n / (time.perf_counter() - t0)
    sem = asyncio.Semaphore(100)

    async def one(i: int) -> None:
        async with sem:
            await target.add_job("noop", {"i": i})

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    par = n / (time.perf_counter() - t0)
    await target.close()
    if daemon is not None:
        daemon.close()
    lat.sort()
    return {
        "seq": seq,
        "par": par,
        "p50_ms": lat[len(lat) // 2],
        "p99_ms": lat[int(len(lat) * 0.99)],
    }


async def _drain(urls: list[str], jobs: int, replicated: bool) -> dict[str, float]:
    name = f"bd-{uuid.uuid4().hex[:6]}"
    m: GlobalQueueManager | None = None
    daemon: Daemon | None = None
    if replicated:
        cfg = _config(urls, name, "async")
        daemon = Daemon(cfg)
        m = GlobalQueueManager()
        await m.initialize(cfg)
        q: Any = m
    else:
        q = JobQueue(name, redis=urls[0], worker={"concurrency": 20})
    starts: list[float] = []
    ends: list[float] = []
    done = asyncio.Event()

    async def noop(job: Any) -> None:
        starts.append(time.perf_counter())
        ends.append(time.perf_counter())
        if len(ends) == jobs:
            done.set()

    q.process("noop", noop)
    lag_max = [0, 0]
    sampling = True

    async def sample() -> None:
        assert m is not None
        rep, topo = m.replicator, m.topo
        assert rep is not None and topo is not None
        p = topo.primary_copy()
        assert p is not None
        while sampling:
            for s in topo.secondaries():
                got = await rep.lag(p, s)
                if got is not None:
                    lag_max[0] = max(lag_max[0], got.entries)
                    lag_max[1] = max(lag_max[1], got.ms)
            await asyncio.sleep(0.1)

    sampler = asyncio.ensure_future(sample()) if m is not None else None
    t_first = time.perf_counter()
    for s in range(0, jobs, 1000):
        await q.add_jobs([("noop", {"i": i}) for i in range(s, min(jobs, s + 1000))])
    await q.start(concurrency=20)
    await asyncio.wait_for(done.wait(), 600)
    out = {"rate": jobs / (ends[-1] - starts[0])}
    if m is not None:
        rep, topo = m.replicator, m.topo
        assert rep is not None and topo is not None
        p = topo.primary_copy()
        assert p is not None
        t_done = time.perf_counter()
        while True:
            lags = [await rep.lag(p, s) for s in topo.secondaries()]
            if all(x is not None and x.entries == 0 and x.pending == 0 for x in lags):
                break
            await asyncio.sleep(0.01)
        t_caught = time.perf_counter()
        sampling = False
        assert sampler is not None
        await sampler
        out["entries_per_s"] = 2 * jobs / (t_caught - t_first)
        out["lag_entries_max"] = lag_max[0]
        out["lag_ms_max"] = lag_max[1]
        out["catch_up_after_s"] = t_caught - t_done
    await q.close()
    if daemon is not None:
        daemon.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--adds", type=int, default=2000)
    p.add_argument("--jobs", type=int, default=20_000)
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    adds: dict[str, list[dict[str, float]]] = {c: [] for c in ADD_CASES}
    drains: dict[str, list[dict[str, float]]] = {"plain": [], "replicated": []}
    servers = [RedisServer() for _ in NAMES]
    for s in servers:
        s.start()
    try:
        urls = [s.url for s in servers]
        clients = [redis.Redis.from_url(u) for u in urls]
        for rep in range(args.reps):
            order = ADD_CASES[rep % 4 :] + ADD_CASES[: rep % 4]
            for case in order:
                for c in clients:
                    c.flushall()
                r = asyncio.run(_adds(case, urls, args.adds))
                adds[case].append(r)
                print(
                    f"rep {rep + 1} add {case:6s} "
                    + "  ".join(f"{k} {v:.2f}" for k, v in r.items()),
                    flush=True,
                )
            for kind in ("plain", "replicated") if rep % 2 == 0 else ("replicated", "plain"):
                for c in clients:
                    c.flushall()
                r = asyncio.run(_drain(urls, args.jobs, kind == "replicated"))
                drains[kind].append(r)
                print(
                    f"rep {rep + 1} drain {kind:10s} "
                    + "  ".join(f"{k} {v:.2f}" for k, v in r.items()),
                    flush=True,
                )
    finally:
        for s in servers:
            s.close()
    med = statistics.median
    print(
        f"\n{args.reps} repetitions, medians (min-max); machine: {platform.machine()}, "
        f"{os.cpu_count()} CPUs, python {platform.python_version()}"
    )
    base = med(r["seq"] for r in adds["plain"])
    base_par = med(r["par"] for r in adds["plain"])
    for case in ADD_CASES:
        seq = [r["seq"] for r in adds[case]]
        par = [r["par"] for r in adds[case]]
        print(
            f"  add_job {case:6s}: one at a time {med(seq):,.0f} jobs/s ({min(seq):,.0f}-"
            f"{max(seq):,.0f}) = {med(seq) / base * 100:.0f} %, p50 "
            f"{med(r['p50_ms'] for r in adds[case]):.2f} ms p99 "
            f"{med(r['p99_ms'] for r in adds[case]):.2f} ms; 100 coroutines "
            f"{med(par):,.0f} jobs/s = {med(par) / base_par * 100:.0f} %"
        )
    plain = med(r["rate"] for r in drains["plain"])
    for kind in ("plain", "replicated"):
        rates = [r["rate"] for r in drains[kind]]
        print(
            f"  drain {kind:10s}: {med(rates):,.0f} jobs/s ({min(rates):,.0f}-"
            f"{max(rates):,.0f}) = {med(rates) / plain * 100:.0f} %"
        )
    rr = drains["replicated"]
    eps = [r["entries_per_s"] for r in rr]
    print(
        f"  replication: {med(eps):,.0f} entries/s per secondary ({min(eps):,.0f}-"
        f"{max(eps):,.0f}); largest lag {med(r['lag_entries_max'] for r in rr):,.0f} entries, "
        f"{med(r['lag_ms_max'] for r in rr):,.0f} ms; caught up "
        f"{med(r['catch_up_after_s'] for r in rr):.2f} s after the last completion"
    )


if __name__ == "__main__":
    main()
