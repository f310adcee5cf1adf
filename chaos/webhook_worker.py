"""A worker process with guaranteed webhooks, for the ``webhooks`` chaos scenario.

    python chaos/webhook_worker.py URL PREFIX QUEUE [CONCURRENCY]

Processes ``noop`` jobs (a few ms each) and runs the webhook delivery service (loopback
allowed, fast retries, short take-over times so a killed worker's deliveries move on
quickly). The endpoint and its secret are registered by the scenario; the secret reaches
this process in ``KQ_WEBHOOK_SECRET`` (as an application would pass it from its config).
Prints ``ready`` once started.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from kitium_queue import JobQueue
from kitium_queue.features.webhooks import WebhookManager

HOOK_ID = "chaos"


async def main(url: str, prefix: str, name: str, concurrency: int) -> None:
    queue = JobQueue(name, redis=url, prefix=prefix,
                     worker={"concurrency": concurrency},
                     settings={"lock_duration": 2000, "max_stalled_interval": 500})
    WebhookManager(queue, secrets={HOOK_ID: os.environ["KQ_WEBHOOK_SECRET"]},
                   allow_networks=["127.0.0.0/8"], backoff_ms=50, max_backoff_ms=500,
                   claim_idle_ms=1000, lease_ms=2000, poll_ms=20, breaker_threshold=1000)

    @queue.process("noop")
    async def noop(job: Any) -> None:
        await asyncio.sleep(0.002)

    await queue.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3],
                     int(sys.argv[4]) if len(sys.argv) > 4 else 20))
