"""Multi-tenancy on a real Redis Cluster (3 masters on loopback).

Quotas are per queue and exact there, also on a cluster: each queue's keys share its
hash tag, so every tenant check is one script on one node. Nothing spans queues
atomically; the way to bound a tenant's work as a whole is to keep it in one queue, or
one ``PartitionedQueue`` routed by ``partition_key=<tenant>`` (one partition, one hash
tag). Shown here: the registry on a cluster client, two queues on two masters each
holding the tenant's quota separately, a partitioned queue routed by tenant bounding
the tenant as a whole, and the same partitioned queue without the routing holding one
quota per partition. No command spans two slots.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from _cluster import LocalCluster
from helpers import wait_until
from kitium_queue import JobQueue, PartitionedQueue
from kitium_queue.errors import JobRefusedError, QuotaExceededError
from kitium_queue.features.tenancy import TenantRegistry

pytestmark = [pytest.mark.redis_only]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(masters=3, replicas=0) as c:
        yield c


def _crossslot(cluster: LocalCluster) -> int:
    total = 0
    for node in cluster.alive():
        entry = cluster.info(node, "errorstats").get("errorstat_CROSSSLOT")
        if isinstance(entry, dict):
            total += int(entry.get("count", 0))
    return total


async def test_quotas_on_a_cluster(cluster: LocalCluster, prefix: str) -> None:
    a = JobQueue("ta", redis=cluster.url, prefix=prefix)
    b = JobQueue("tb.2", redis=cluster.url, prefix=prefix)
    pq = PartitionedQueue("tp", partitions=3, redis=cluster.url, prefix=prefix)
    reg = TenantRegistry(redis=cluster.url, prefix=prefix)
    try:
        assert len({cluster.master_for_key(q.keys.wait).port for q in (a, b)}) == 2
        for q in (a, b, pq):
            reg.enable(q)
            await reg.attach(q)
        await reg.create_tenant({"tenant_id": "acme", "quota": {"max_queue_size": 4,
                                                                "max_concurrency": 2}})
        # Each queue holds the quota on its own (its own hash tag, its own node).
        for q in (a, b):
            await q.add_jobs([("x", {}, {"tenant_id": "acme"})] * 4)
            with pytest.raises(QuotaExceededError):
                await q.add_job("x", tenant_id="acme")
        # Routed by tenant, a partitioned queue bounds the tenant as a whole.
        for _ in range(4):
            await pq.add_job("x", {}, tenant_id="acme", partition_key="acme")
        with pytest.raises(QuotaExceededError):
            await pq.add_job("x", {}, tenant_id="acme", partition_key="acme")
        # Not routed: each partition holds its own quota (up to 3 x 4 in all).
        added = 0
        for _ in range(20):
            try:
                await pq.add_job("x", {}, tenant_id="acme")
                added += 1
            except JobRefusedError:
                pass
        assert added == 8  # the two other partitions' quotas
        usage = await reg.get_tenant_usage("acme")
        assert usage.queued == 4 + 4 + 12
        # Caps at claim on the cluster: at most 2 running per queue.
        peak: dict[str, int] = {}
        running: dict[str, int] = {}

        async def run(job: Any) -> None:
            running[job.queue_name] = running.get(job.queue_name, 0) + 1
            peak[job.queue_name] = max(peak.get(job.queue_name, 0), running[job.queue_name])
            await asyncio.sleep(0.02)
            running[job.queue_name] -= 1

        for q in (a, b):
            q.process("x", run)
            await q.start(concurrency=6)
        await wait_until(lambda: _done(reg), 15)
        assert peak == {"ta": 2, "tb.2": 2}
        assert _crossslot(cluster) == 0
    finally:
        for q in (a, b, pq):
            await q.close()
        await reg.close()


async def _done(reg: TenantRegistry) -> bool:
    u = await reg.get_tenant_usage("acme", queues=["ta", "tb.2"])
    return u.completed == 8 and u.active == 0
