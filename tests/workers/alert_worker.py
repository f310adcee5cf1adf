"""A worker process for the alert tests: a queue whose ``AdvancedQueueConfig`` has one
alert rule, evaluated by whichever process leads.

    python alert_worker.py --url redis://127.0.0.1:PORT/0 --prefix P --queue Q

Rule ``backlog``: ``queue_depth`` >= 5 fires, < 1 clears; evaluated every 50 ms, leader
lease 1 s. Each ``alert-fired`` / ``alert-cleared`` event this process reports (only the
leader reports) is appended as JSON ``{"event", "pid", "rule", "value", "id"}`` to the
list ``<prefix>:alerts``. Jobs ``n`` take 5 ms. Prints ``ready`` once the worker runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

import orjson
import redis.asyncio as aioredis

from kitium_queue import JobQueue


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--queue", required=True)
    args = p.parse_args()
    asyncio.run(run(args))


async def run(args: argparse.Namespace) -> None:
    queue = JobQueue(
        args.queue,
        redis=args.url,
        prefix=args.prefix,
        worker={"concurrency": 4, "scheduler": False, "shutdown_timeout": 1000},
        advanced={
            "monitoring": {
                "enabled": True,
                "evaluation_interval_ms": 50,
                "leader_lease_ms": 1000,
                "alerts": [
                    {"name": "backlog", "metric": "queue_depth", "threshold": 5, "clear_below": 1}
                ],
            }
        },
    )
    rec = aioredis.Redis.from_url(args.url)
    pid = os.getpid()

    async def record(ev: Any) -> None:
        entry = {
            "event": ev.event,
            "pid": pid,
            "rule": ev.extra.get("subject"),
            "value": ev.extra.get("value"),
            "id": ev.extra.get("event_id"),
        }
        await rec.rpush(f"{args.prefix}:alerts", orjson.dumps(entry))

    queue.on("alert-fired", record)
    queue.on("alert-cleared", record)

    async def process(job: Any) -> None:
        await asyncio.sleep(0.005)

    queue.process("n", process)
    await queue.start()
    print("ready", flush=True)
    try:
        await queue.run_worker()
    finally:
        await rec.aclose()


if __name__ == "__main__":
    main()
