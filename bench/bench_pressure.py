"""Redis under pressure (issue 18): the cost of replica-acknowledged writes, and the
throughput through a slow link, each against the plain queue in the same run.

    .venv/bin/python bench/bench_pressure.py                 # both parts, 3 repetitions
    .venv/bin/python bench/bench_pressure.py --quick --reps 1
    .venv/bin/python bench/bench_pressure.py --only replicas --json out.json

1. **Replica acks** (a primary and one replica on loopback, private servers): awaited
   ``add_job`` one at a time (rate, p50 / p99 latency), ``add_job`` from 100 coroutines
   (rate), and a drain of no-op jobs by one in-process worker (concurrency 20), each
   plain and with ``ReplicaAcks(replicas=1)`` (outcomes waited for too).
2. **Slow link**: the same drain through the chaos proxy at 0, 1, 5 and 20 ms each way
   (``chaos.proxy``), and at 20 ms with a 200 ms spike every second, with leases sized
   for it (lock 3 s, renewed every 500 ms).

Figures are medians over the repetitions. Benchmarks are not tests: nothing asserts.
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

import redis

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

from chaos.proxy import Proxy  # noqa: E402

from _redis import RedisServer  # noqa: E402
from kitium_queue import JobQueue, ReplicaAcks  # noqa: E402

LEASE = {"lock_duration": 3000, "lock_renew_time": 500}


def _pct(v: list[float], p: float) -> float:
    s = sorted(v)
    return s[min(len(s) - 1, int(len(s) * p / 100))] if s else float("nan")


async def _single(q: JobQueue, n: int) -> dict[str, float]:
    for i in range(20):
        await q.add_job("noop", {"w": i})
    lat = []
    t0 = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        await q.add_job("noop", {"i": i})
        lat.append(time.perf_counter() - t)
    took = time.perf_counter() - t0
    return {"rate": n / took, "p50_ms": _pct(lat, 50) * 1000, "p99_ms": _pct(lat, 99) * 1000}


async def _concurrent(q: JobQueue, n: int) -> float:
    it = iter(range(n))

    async def one() -> None:
        for i in it:
            await q.add_job("noop", {"i": i})

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(100)))
    return n / (time.perf_counter() - t0)


async def _drain(q: JobQueue, n: int, spikes: Proxy | None = None) -> float:
    for lo in range(0, n, 1000):
        await q.add_jobs([("noop", {"i": i}) for i in range(lo, min(n, lo + 1000))])
    done = asyncio.Event()
    count = [0]
    first: list[float] = []

    async def noop(job: Any) -> None:
        if not first:
            first.append(time.perf_counter())
        count[0] += 1
        if count[0] >= n:
            done.set()

    q.process("noop", noop)
    stop = asyncio.Event()

    async def spike() -> None:
        assert spikes is not None
        while not stop.is_set():
            await asyncio.sleep(0.8)
            spikes.set_delay(0.2)
            await asyncio.sleep(0.2)
            spikes.set_delay(0.02)

    task = asyncio.ensure_future(spike()) if spikes is not None else None
    await q.start(concurrency=20)
    await asyncio.wait_for(done.wait(), 600)
    took = time.perf_counter() - first[0]
    stop.set()
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await q.worker.stop(timeout_ms=2000)
    return n / took


async def replicas_part(quick: bool, prefix: str) -> dict[str, dict[str, float]]:
    n_single, n_conc, n_drain = (1000, 5000, 5000) if quick else (5000, 20000, 20000)
    out: dict[str, dict[str, float]] = {}
    with RedisServer() as primary:
        replica = RedisServer(
            "--replicaof", "127.0.0.1", str(primary.port), "--repl-diskless-sync-delay", "0"
        ).start()
        try:
            c = redis.Redis(port=replica.port)
            while c.info("replication").get("master_link_status") != "up":
                time.sleep(0.02)
            c.close()
            for label, acks in (("plain", False), ("replica acks (WAIT 1)", True)):
                figs: dict[str, float] = {}
                for what in ("single", "concurrent", "drain"):
                    q = JobQueue(f"{prefix}-{what}-{acks}", redis=primary.url, prefix=prefix)
                    if acks:
                        ReplicaAcks(q, replicas=1, timeout_ms=1000)
                    try:
                        if what == "single":
                            s = await _single(q, n_single)
                            figs["single_rate"], figs["single_p50_ms"] = s["rate"], s["p50_ms"]
                            figs["single_p99_ms"] = s["p99_ms"]
                        elif what == "concurrent":
                            figs["concurrent_rate"] = await _concurrent(q, n_conc)
                        else:
                            figs["drain_rate"] = await _drain(q, n_drain)
                    finally:
                        await q.close()
                out[label] = figs
        finally:
            replica.close()
    return out


async def slow_part(quick: bool, prefix: str) -> dict[str, dict[str, float]]:
    n = 2000 if quick else 10000
    out: dict[str, dict[str, float]] = {}
    with RedisServer() as srv:
        for label, delay, spikes in (
            ("direct", None, False),
            ("0 ms each way (proxy only)", 0.0, False),
            ("1 ms each way", 0.001, False),
            ("5 ms each way", 0.005, False),
            ("20 ms each way", 0.02, False),
            ("20 ms each way + 200 ms spike every 1 s", 0.02, True),
        ):
            proxy = None if delay is None else Proxy(srv.port, max_lifetime=900).start()
            try:
                url = srv.url if proxy is None else proxy.url
                if proxy is not None:
                    proxy.set_delay(delay or 0.0)
                q = JobQueue(f"{prefix}-slow-{len(out)}", redis=url, prefix=prefix, settings=LEASE)
                try:
                    out[label] = {"drain_rate": await _drain(q, n, proxy if spikes else None)}
                finally:
                    await q.close()
            finally:
                if proxy is not None:
                    proxy.stop()
    return out


def _median(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    keys = runs[0].keys()
    return {k: {m: statistics.median(r[k][m] for r in runs) for m in runs[0][k]} for k in keys}


async def main(args: argparse.Namespace) -> None:
    parts = args.only.split(",") if args.only else ["replicas", "slow"]
    result: dict[str, Any] = {}
    for part in parts:
        runs = []
        for rep in range(args.reps):
            fn = replicas_part if part == "replicas" else slow_part
            runs.append(await fn(args.quick, f"kqp{rep}"))
            print(f"[{part}] rep {rep + 1}/{args.reps} done", flush=True)
        result[part] = _median(runs)
    for part, rows in result.items():
        print(f"\n## {part}")
        for label, figs in rows.items():
            print(f"{label}: " + ", ".join(f"{k}={v:,.2f}" for k, v in figs.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", default="", help="replicas,slow")
    ap.add_argument("--json", default="")
    asyncio.run(main(ap.parse_args()))
