"""A Redis Cluster resharding the queue's hash slot under load (``redis-cli --cluster
reshard`` moves a slot's keys in batches): while some of the queue's keys are on each
node, every call on several of them is refused (``TRYAGAIN``, and redis-py's
``ClusterError: TTL exhausted`` once its redirections run out). Nothing of such a call
was run. A completed job must not be recorded as failed for it, nor run twice; adds
are refused whole with ``WriteRefusedError`` saying why; all goes on once the slot has
moved.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from _cluster import LocalCluster, key_slot
from helpers import wait_until
from kitium_queue import JobQueue, WriteRefusedError

pytestmark = pytest.mark.redis_only


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(masters=3, replicas=0) as c:
        yield c


async def test_a_slot_moved_under_load_loses_nothing_and_fails_no_job(
    cluster: LocalCluster, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="kitium_queue")
    q = JobQueue("reshard", redis=cluster.url, prefix=prefix, worker={"concurrency": 8})
    producer = JobQueue("reshard", redis=cluster.url, prefix=prefix)
    runs: list[str] = []

    @q.process("n")
    async def n(job: Any) -> None:
        await asyncio.sleep(0.01)
        runs.append(job.id)

    added: list[str] = []
    refused: list[str] = []
    stop = asyncio.Event()

    async def produce() -> None:
        i = 0
        while not stop.is_set():
            try:
                added.append(await producer.add_job("n", {"i": i}))
            except WriteRefusedError as exc:
                refused.append(str(exc))
            i += 1
            await asyncio.sleep(0.003)

    try:
        await q.start()
        task = asyncio.create_task(produce())
        await asyncio.sleep(1.0)
        slot = key_slot(q.keys.meta)
        home = cluster.master_for_slot(slot)
        other = next(m for m in cluster.masters() if m is not home)
        # There and back: batches small and slow enough that calls meet the slot split.
        moved = await asyncio.to_thread(cluster.migrate_slot, slot, other, batch=10, pause=0.05)
        assert moved > 0 and cluster.master_for_slot(slot) is other
        await asyncio.sleep(0.5)
        await asyncio.to_thread(cluster.migrate_slot, slot, home, batch=10, pause=0.05)
        await asyncio.sleep(0.5)
        stop.set()
        await task

        async def drained() -> bool:
            st = await producer.get_stats()
            return st.waiting == 0 and st.active == 0

        await wait_until(drained, 30)
        st = await producer.get_stats()
        assert (st.failed, st.dlq) == (0, 0), st
        assert sorted(runs) == sorted(added)  # each acknowledged job ran, once
        for text in refused:
            assert "moving between Redis Cluster nodes" in text, text
    finally:
        stop.set()
        await q.close()
        await producer.close()
    texts = [r.getMessage() for r in caplog.records]
    assert not [t for t in texts if "final failure" in t or "claim failed" in t], texts[:5]
    # The calls did meet the slot split (or this test proves nothing).
    reports = [t for t in texts if "moving between Redis Cluster nodes" in t]
    assert refused or reports, texts[:5]
    assert len(reports) <= 4, reports  # a start and an end per queue and move, not per call
