"""A worker process for the multi-tenancy tests (``tests/test_tenancy_procs.py``).

    python tenant_worker.py --url redis://127.0.0.1:PORT/0 --prefix P --queue Q \
        [--concurrency 4] [--job-ms 30] [--quantum 16]

Enables tenancy on the queue (``TenantRegistry.enable``) and runs ``run_worker()`` with
one processor for every job name. Each run is recorded in the Redis list
``<prefix>:runs`` as JSON ``{"id", "tenant", "pid", "start", "end"}`` (ms since the
epoch, this machine's clock, taken inside the processor: within the job's claim and
its recorded outcome). Prints ``ready`` once the worker runs.
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
from kitium_queue.features.tenancy import TenantRegistry


async def run(args: argparse.Namespace) -> None:
    queue = JobQueue(args.queue, redis=args.url, prefix=args.prefix,
                     worker={"concurrency": args.concurrency, "shutdown_timeout": 2000})
    TenantRegistry.enable(queue, quantum=args.quantum)
    rec = aioredis.Redis.from_url(args.url)
    runs_key = f"{args.prefix}:runs"
    pid = os.getpid()

    async def process(job: Any) -> None:
        start = time.time() * 1000
        ms = job.data.get("ms", args.job_ms) if isinstance(job.data, dict) else args.job_ms
        if ms:
            await asyncio.sleep(ms / 1000)
        end = time.time() * 1000
        await rec.rpush(runs_key, orjson.dumps({
            "id": job.id, "tenant": job.options.get("tenant_id"), "pid": pid,
            "start": start, "end": end}))

    queue.process("*", process)
    await queue.start()
    print("ready", flush=True)
    try:
        await queue.run_worker()  # already started: installs signal handlers and waits
    finally:
        await rec.aclose()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--queue", required=True)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--job-ms", type=int, default=30)
    p.add_argument("--quantum", type=int, default=16)
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
