"""FIFO message groups: each customer's orders in order, customers in parallel.

FIFO ordered processing (``add_to_group``): orders of one
customer run one at a time in the order they were added — a failing order is retried
before the next one starts — while other customers go on; a paused customer waits.

    python examples/fifo_groups.py                                 # memory:// backend
    KQ_REDIS_URL=redis://localhost:6379/0 python examples/fifo_groups.py
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from kitium_queue import FIFOQueueManager, Job, JobQueue

queue = JobQueue("orders", redis=os.environ.get("KQ_REDIS_URL", "").strip() or "memory://",
                 prefix=f"kq-examples-{os.getpid()}", worker={"concurrency": 10})
fifo = FIFOQueueManager(queue)
processed: list[str] = []
failed_once: set[str] = set()


@queue.process("process-order")
async def process_order(job: Job) -> dict[str, Any]:
    order = job.data["order"]
    if order == "B-2" and order not in failed_once:
        failed_once.add(order)
        raise RuntimeError("payment service busy")  # retried; B-3 waits for it
    await asyncio.sleep(0.01)
    processed.append(order)
    return {"order": order, "attempt": job.attempts}


async def main() -> None:
    await fifo.pause_group("customer-C")
    for n in (1, 2, 3):
        for customer in ("A", "B", "C"):
            await fifo.add_to_group(
                "process-order", {"order": f"{customer}-{n}"}, {"group_id": f"customer-{customer}"},
                {"attempts": 3, "backoff": {"type": "fixed", "delay": 50}},
            )
    await queue.start()
    while len(processed) < 6:
        await asyncio.sleep(0.01)
    for customer in ("A", "B"):
        print(f"customer-{customer}: {[o for o in processed if o[0] == customer]}")
    stats = await fifo.get_group_stats("customer-C")
    print(f"customer-C paused={stats.paused} waiting={stats.size} jobs")
    await fifo.resume_group("customer-C")
    while len(processed) < 9:
        await asyncio.sleep(0.01)
    print(f"customer-C: {[o for o in processed if o[0] == 'C']}")
    await queue.clear(force=True)
    await queue.close()


if __name__ == "__main__":
    asyncio.run(main())
