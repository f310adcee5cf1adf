"""A worker process for the circuit-breaker tests and chaos scenario.

    python breaker_worker.py --url redis://127.0.0.1:PORT/0 --prefix P --queue Q \
        [--concurrency 4] [--lease 30000]

Runs ``JobQueue.run_worker()`` with a ``CircuitBreakerManager`` and one processor for
every job name, which stands for a call to a dependency whose health is the Redis
string ``<prefix>:dep``: ``down`` (default) raises ``ConnectionError``, ``up`` returns,
``hang`` sleeps until the key changes. Each run appends JSON ``{"id", "name", "pid",
"st", "t"}`` to the list ``<prefix>:runs`` when it starts (``st``: the state of breaker
``data["b"]`` (default ``dep``) as the run starts). Prints ``ready`` once the worker runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

import orjson
import redis.asyncio as aioredis

from kitium_queue import CircuitBreakerManager, JobQueue


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--queue", required=True)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--lease", type=int, default=30_000)
    args = p.parse_args()
    asyncio.run(run(args))


async def run(args: argparse.Namespace) -> None:
    queue = JobQueue(
        args.queue,
        redis=args.url,
        prefix=args.prefix,
        worker={"concurrency": args.concurrency, "scheduler": False, "shutdown_timeout": 2000},
        settings={"lock_duration": args.lease, "max_stalled_interval": 200, "max_stalled_count": 5},
        retry={"max_attempts": 1},
    )
    CircuitBreakerManager(queue)
    rec = aioredis.Redis.from_url(args.url)
    dep_key, runs_key = f"{args.prefix}:dep", f"{args.prefix}:runs"
    pid = os.getpid()

    async def process(job: Any) -> Any:
        data = job.data if isinstance(job.data, dict) else {}
        breaker = data.get("b", "dep")
        st = await rec.hget(queue.keys.extra(f"cb:b:{breaker}"), "st")
        await rec.rpush(
            runs_key,
            orjson.dumps(
                {
                    "id": job.id,
                    "name": job.name,
                    "pid": pid,
                    "t": time.time() * 1000,
                    "st": st.decode() if st else None,
                }
            ),
        )
        while True:
            health = await rec.get(dep_key)
            if health == b"up":
                return "ok"
            if health != b"hang":
                raise ConnectionError("dependency down")
            await asyncio.sleep(0.05)

    queue.process("*", process)
    await queue.start()
    print("ready", flush=True)
    try:
        await queue.run_worker()
    finally:
        await rec.aclose()


if __name__ == "__main__":
    main()
