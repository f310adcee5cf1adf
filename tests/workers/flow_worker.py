"""A worker process for the schedule, flow-control and benchmark runs.

    python flow_worker.py --url redis://127.0.0.1:PORT/0 --prefix P --queue Q \
        [--concurrency 4] [--job-ms 0] [--limiter 10/1000] [--global-cap 3] \
        [--rate 'customer-*=5/1000'] [--cap 'customer-*=1'] [--no-scheduler] [--tenancy]

Runs ``JobQueue.run_worker()`` (its scheduler too, unless ``--no-scheduler``) with one
processor for every job name; ``--tenancy`` enables multi-tenancy on the queue. Each run
is recorded in the Redis list ``<prefix>:runs`` as JSON ``{"id", "name", "tenant", "pid",
"start", "end"}`` (ms since the epoch, this machine's clock, taken inside the processor:
within the job's claim and its recorded outcome; the schedule tests compare them with
tick times). ``job.data["ms"]`` (default ``--job-ms``) is how long a run sleeps. Prints
``ready`` once the worker runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

import orjson
import redis.asyncio as aioredis

from kitium_queue import JobQueue


def _pairs(values: list[str]) -> list[tuple[str, str]]:
    return [tuple(v.rsplit("=", 1)) for v in values]  # type: ignore[misc]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--queue", required=True)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--job-ms", type=int, default=0)
    p.add_argument("--limiter", default=None, help="MAX/DURATION_MS")
    p.add_argument("--global-cap", type=int, default=None)
    p.add_argument("--rate", action="append", default=[], help="PATTERN=MAX/DURATION_MS")
    p.add_argument("--cap", action="append", default=[], help="PATTERN=N")
    p.add_argument("--no-scheduler", action="store_true")
    p.add_argument("--tenancy", action="store_true", help="enable multi-tenancy")
    args = p.parse_args()
    asyncio.run(run(args))


async def run(args: argparse.Namespace) -> None:
    worker: dict[str, Any] = {
        "concurrency": args.concurrency,
        "scheduler": not args.no_scheduler,
        "shutdown_timeout": 2000,
    }
    if args.limiter:
        mx, dur = args.limiter.split("/")
        worker["limiter"] = {"max": int(mx), "duration": int(dur)}
    queue = JobQueue(args.queue, redis=args.url, prefix=args.prefix, worker=worker)
    if args.global_cap:
        queue.set_global_concurrency(args.global_cap)
    for pattern, spec in _pairs(args.rate):
        mx, dur = spec.split("/")
        queue.set_rate_limit(pattern, max=int(mx), duration=int(dur))
    for pattern, n in _pairs(args.cap):
        queue.set_concurrency_limit(pattern, int(n))
    if args.tenancy:
        from kitium_queue.features.tenancy import TenantRegistry

        TenantRegistry.enable(queue)
    rec = aioredis.Redis.from_url(args.url)
    runs_key = f"{args.prefix}:runs"
    pid = os.getpid()

    async def process(job: Any) -> Any:
        start = time.time() * 1000
        ms = (job.data or {}).get("ms", args.job_ms) if isinstance(job.data, dict) else args.job_ms
        if ms:
            await asyncio.sleep(ms / 1000)
        end = time.time() * 1000
        await rec.rpush(
            runs_key,
            orjson.dumps({"id": job.id, "name": job.name, "tenant": job.options.get("tenant_id"),
                          "pid": pid, "start": start, "end": end}),
        )
        return None

    queue.process("*", process)
    await queue.start()
    print("ready", flush=True)
    try:
        await queue.run_worker()  # already started: installs signal handlers and waits
    finally:
        await rec.aclose()


if __name__ == "__main__":
    main()
