"""Multi-region queue: three regions, replication, a failover and back.

The primary (us-east-1) takes the jobs and replicates them to the other two regions;
a job pinned to eu-west-1 stays there; ``failover_to`` hands the primary role to
eu-west-1 with nothing lost or run twice, and back. Each region is its own store:
``memory://`` stores here (one per region, in this process), three Redis servers (or
three databases of one, as with ``KQ_REDIS_URL``) in a deployment.

    python examples/regions.py                                            # memory://
    KQ_REDIS_URL=redis://localhost:6379/0 python examples/regions.py      # databases 0-2
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from kitium_queue import GlobalQueueManager, Job

REGIONS = ("us-east-1", "eu-west-1", "ap-southeast-1")


def region_urls() -> list[str]:
    url = os.environ.get("KQ_REDIS_URL", "").strip()  # empty: as if unset
    if not url:
        return [f"memory://example-{os.getpid()}-{r}" for r in REGIONS]
    base, _, db = url.rpartition("/")
    first = int(db) if db.isdigit() else 0
    return [f"{base}/{first + i}" for i in range(len(REGIONS))]


async def main() -> None:
    us, eu, ap = region_urls()
    regions = GlobalQueueManager()
    await regions.initialize(
        {
            "name": "global-orders",
            "regions": [
                {"region": "us-east-1", "redis": us, "is_primary": True},
                {"region": "eu-west-1", "redis": eu, "priority": 1},
                {"region": "ap-southeast-1", "redis": ap, "priority": 2},
            ],
            "replication": {"enabled": True},
            "failover": {"enabled": True, "timeout_ms": 5000},
            "queue_options": {"prefix": f"kq-examples-{os.getpid()}"},
        }
    )
    ran: list[tuple[int, str | None]] = []

    @regions.process("process-order")
    async def process(job: Job) -> dict[str, Any]:
        ran.append((job.data["order"], regions.primary))
        return {"order": job.data["order"]}

    first = [await regions.add_job("process-order", {"order": n}) for n in range(3)]
    pinned = await regions.add_job("process-order", {"order": 99}, region="eu-west-1")
    print(f"pinned job id: {pinned.split(':')[0]}:...")

    # Asynchronous replication: every region holds a copy of the primary's jobs.
    while (await regions.get_global_stats()).region("ap-southeast-1").lag_entries:
        await asyncio.sleep(0.01)
    copy = await regions.region("ap-southeast-1").lane.get_job_status(first[0])
    print(f"copy in ap-southeast-1: {copy.status.value if copy else None}")

    moved = await regions.failover_to("eu-west-1")
    print(f"failover: {moved.previous} -> {moved.primary}, epoch {moved.epoch}")
    second = [await regions.add_job("process-order", {"order": n}) for n in range(3, 6)]
    back = await regions.failover_to("us-east-1")
    print(f"and back: {back.previous} -> {back.primary}, epoch {back.epoch}")

    await regions.start(concurrency=4)
    while len(ran) < len(first) + len(second) + 1:
        await asyncio.sleep(0.01)
    orders = sorted(n for n, _ in ran)
    print(f"orders run once each: {orders == [0, 1, 2, 3, 4, 5, 99]}")
    stats = await regions.get_global_stats()
    for r in stats.regions:
        print(f"  {r.region}: {r.role}, epoch {r.epoch}, healthy={r.healthy}")
    await regions.clear(force=True)
    await regions.close()


if __name__ == "__main__":
    asyncio.run(main())
