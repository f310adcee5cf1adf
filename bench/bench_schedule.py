"""Scheduling and flow-control figures: tick precision and limiter accuracy.

    .venv/bin/python bench/bench_schedule.py                  # private redis-server
    .venv/bin/python bench/bench_schedule.py --redis redis://127.0.0.1:6379/0 --json out.json

1. **Tick precision.** ``--workers`` worker processes, each running the scheduler, fire a
   ``schedule_every(--interval)`` schedule ``--ticks`` times. For every tick: due →
   enqueued (the job's creation time, Redis clock), due → claimed (lease start, Redis
   clock) and due → processor started (the worker's clock). p50 / p99 / max in ms.
2. **Queue limiter accuracy.** ``--workers`` processes share ``worker.limiter`` =
   ``--limit`` (e.g. 50/1000); ``--jobs`` no-op jobs are added at once. Achieved rate =
   starts in the first k whole windows / (k × window), against the configured rate; also
   the largest number of starts in any sliding window (a fixed window allows up to 2×
   at a window edge).
3. **Per-key limit accuracy.** The same with a per-key limit (``set_rate_limit``,
   ``--key-limit``) on ``--key-jobs`` jobs of one key, mixed with as many unlimited jobs.

Prints a table; ``--json`` also writes the figures. Benchmarks are not tests: nothing
here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from kitium_queue import JobQueue

QUEUE = "bench-sched"


# ---------------------------------------------------------------------------- worker mode
async def _worker(args: argparse.Namespace) -> None:
    worker: dict[str, Any] = {"concurrency": args.concurrency, "scheduler": args.scheduler,
                              "shutdown_timeout": 2000}
    if args.w_limit:
        mx, dur = args.w_limit.split("/")
        worker["limiter"] = {"max": int(mx), "duration": int(dur)}
    q = JobQueue(QUEUE, redis=args.redis, prefix=args.prefix, worker=worker)
    if args.w_key_limit:
        mx, dur = args.w_key_limit.split("/")
        q.set_rate_limit("*", max=int(mx), duration=int(dur))
    rec = aioredis.Redis.from_url(args.redis)
    key = f"{args.prefix}:starts"

    async def process(job: Any) -> None:
        await rec.rpush(key, orjson.dumps([job.id, job.name, time.time() * 1000]))

    q.process("*", process)
    await q.start()
    print("ready", flush=True)
    try:
        await q.run_worker()
    finally:
        await rec.aclose()


# ---------------------------------------------------------------------------- driver
class Workers:
    def __init__(self, args: argparse.Namespace, prefix: str) -> None:
        self.args = args
        self.prefix = prefix
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, n: int, *extra: str) -> None:
        for _ in range(n):
            p = subprocess.Popen(
                [sys.executable, __file__, "--worker", "--redis", self.args.redis,
                 "--prefix", self.prefix, *extra],
                stdout=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            self.procs.append(p)
        for p in self.procs[-n:]:
            assert p.stdout is not None
            line = p.stdout.readline()
            if line.strip() != b"ready":
                raise SystemExit(f"worker failed to start: {line!r}")

    def stop(self) -> None:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def _summary(values: list[float]) -> dict[str, float]:
    return {"p50": round(_pct(values, 50), 2), "p99": round(_pct(values, 99), 2),
            "max": round(max(values), 2), "mean": round(statistics.fmean(values), 2)}


async def _starts(q: JobQueue, prefix: str) -> list[tuple[str, str, float]]:
    client = await q.client()
    return [tuple(orjson.loads(r)) for r in await client.lrange(f"{prefix}:starts", 0, -1)]  # type: ignore[misc]


async def _wait(q: JobQueue, prefix: str, n: int, timeout: float) -> list[tuple[str, str, float]]:
    deadline = time.monotonic() + timeout
    while True:
        got = await _starts(q, prefix)
        if len(got) >= n or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.05)


async def tick_precision(args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"bs{os.getpid()}t"
    w = Workers(args, prefix)
    w.start(args.workers, "--scheduler")
    q = JobQueue(QUEUE, redis=args.redis, prefix=prefix, worker={"scheduler": False})
    try:
        anchor = (int(time.time() * 1000) // 1000 + 2) * 1000
        s = await q.schedule_every("tick", None, args.interval, start_date=anchor)
        runs = await _wait(q, prefix, args.ticks, timeout=args.ticks * args.interval / 1000 + 30)
        await q.pause_schedule(s.id)
        enq, claim, start = [], [], []
        for jid, _, started in runs[: args.ticks]:
            tick = int(jid.rsplit(":", 1)[1])
            info = await q.get_job_status(jid)
            if info is None or info.created_at is None or info.started_at is None:
                continue
            enq.append(info.created_at - tick)
            claim.append(info.started_at - tick)
            start.append(started - tick)
        return {"workers": args.workers, "interval_ms": args.interval, "ticks": len(enq),
                "due_to_enqueued_ms": _summary(enq), "due_to_claimed_ms": _summary(claim),
                "due_to_started_ms": _summary(start)}
    finally:
        w.stop()
        await q.close()


def _rate(starts: list[float], per: int, window: int) -> dict[str, Any]:
    starts = sorted(starts)
    t0 = starts[0]
    k = max(1, int((starts[-1] - t0) // window))  # whole windows covered
    in_k = sum(1 for t in starts if t < t0 + k * window)
    best, j = 0, 0
    for i, t in enumerate(starts):
        while starts[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return {"configured_per_s": per * 1000 / window,
            "achieved_per_s": round(in_k * 1000 / (k * window), 2),
            "windows": k, "max_in_sliding_window": best, "jobs": len(starts),
            "span_s": round((starts[-1] - t0) / 1000, 3)}


async def limiter_accuracy(args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"bs{os.getpid()}l"
    w = Workers(args, prefix)
    w.start(args.workers, "--w-limit", args.limit, "--concurrency", "16")
    q = JobQueue(QUEUE, redis=args.redis, prefix=prefix, worker={"scheduler": False})
    try:
        await q.add_jobs([("j", None) for _ in range(args.jobs)])
        runs = await _wait(q, prefix, args.jobs, timeout=120)
        mx, dur = (int(x) for x in args.limit.split("/"))
        out = _rate([t for _, _, t in runs], mx, dur)
        out["processes"] = args.workers
        return out
    finally:
        w.stop()
        await q.close()


async def key_limit_accuracy(args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"bs{os.getpid()}k"
    w = Workers(args, prefix)
    w.start(args.workers, "--w-key-limit", args.key_limit, "--concurrency", "16")
    q = JobQueue(QUEUE, redis=args.redis, prefix=prefix, worker={"scheduler": False})
    mx, dur = (int(x) for x in args.key_limit.split("/"))
    q.set_rate_limit("*", max=mx, duration=dur)
    try:
        jobs: list[Any] = []
        for i in range(args.key_jobs):
            jobs.append(("keyed", i, {"rate_limit_key": "customer-1"}))
            jobs.append(("free", i))
        await q.add_jobs(jobs)
        runs = await _wait(q, prefix, 2 * args.key_jobs, timeout=120)
        keyed = [t for _, name, t in runs if name == "keyed"]
        free = [t for _, name, t in runs if name == "free"]
        out = _rate(keyed, mx, dur)
        out["processes"] = args.workers
        out["unlimited_jobs_done_in_s"] = round((max(free) - min(free)) / 1000, 3)
        return out
    finally:
        w.stop()
        await q.close()


# ---------------------------------------------------------------------------- redis
@contextlib.contextmanager
def _private_redis() -> Any:
    exe = os.environ.get("KQ_REDIS_SERVER") or shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server not found; pass --redis URL")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="kq-bench-")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", workdir],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
                break
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    print(f"tick precision: {args.workers} schedulers, every {args.interval} ms, "
          f"{args.ticks} ticks ...", flush=True)
    results["tick_precision"] = await tick_precision(args)
    print(f"queue limiter {args.limit} across {args.workers} processes, {args.jobs} jobs ...",
          flush=True)
    results["queue_limiter"] = await limiter_accuracy(args)
    print(f"per-key limit {args.key_limit} across {args.workers} processes ...", flush=True)
    results["key_limiter"] = await key_limit_accuracy(args)
    return results


def _print(results: dict[str, Any]) -> None:
    tp = results["tick_precision"]
    print(f"\nTick precision ({tp['workers']} scheduler processes, every "
          f"{tp['interval_ms']} ms, {tp['ticks']} ticks), ms after the due time:")
    print(f"  {'':22} {'p50':>8} {'p99':>8} {'max':>8}")
    for label, key in (("due -> enqueued", "due_to_enqueued_ms"),
                       ("due -> claimed", "due_to_claimed_ms"),
                       ("due -> started", "due_to_started_ms")):
        v = tp[key]
        print(f"  {label:22} {v['p50']:8.2f} {v['p99']:8.2f} {v['max']:8.2f}")
    for title, key in (("Queue limiter", "queue_limiter"), ("Per-key limit", "key_limiter")):
        r = results[key]
        print(f"\n{title} across {r['processes']} processes: configured "
              f"{r['configured_per_s']:.1f}/s, achieved {r['achieved_per_s']:.2f}/s over "
              f"{r['windows']} windows ({r['jobs']} jobs); max in a sliding window: "
              f"{r['max_in_sliding_window']}")
        if "unlimited_jobs_done_in_s" in r:
            print(f"  unlimited jobs mixed in finished in {r['unlimited_jobs_done_in_s']} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--redis", default=None, help="Redis URL (default: a private server)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--ticks", type=int, default=200)
    p.add_argument("--interval", type=int, default=100, help="schedule interval, ms")
    p.add_argument("--limit", default="50/1000", help="queue limiter MAX/DURATION_MS")
    p.add_argument("--jobs", type=int, default=500)
    p.add_argument("--key-limit", default="20/1000", help="per-key limit MAX/DURATION_MS")
    p.add_argument("--key-jobs", type=int, default=200)
    p.add_argument("--json", default=None, help="also write the figures to this file")
    # worker mode (internal)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--prefix", default="", help=argparse.SUPPRESS)
    p.add_argument("--scheduler", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--concurrency", type=int, default=8, help=argparse.SUPPRESS)
    p.add_argument("--w-limit", default=None, help=argparse.SUPPRESS)
    p.add_argument("--w-key-limit", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        asyncio.run(_worker(args))
        return
    with contextlib.ExitStack() as stack:
        if args.redis is None:
            args.redis = stack.enter_context(_private_redis())
        results = asyncio.run(_main(args))
    _print(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
