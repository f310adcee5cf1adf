"""Regions x workflows and erasures, second look, on private ``redis-server`` processes
(ports 28100-28199): a stranded erasure re-submitted once its job's id was taken by
another job at the new primary."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from kitium_queue.features.regions import GlobalQueueManager
from regionpair import EU, US, region_pair

PORTS = {"erasure_id_taken": 28110}


async def state_at(m: GlobalQueueManager, region: str, job_id: str) -> str | None:
    info = await m.region(region).lane.get_job_status(job_id)
    return None if info is None else info.status.value


async def settle(read: Callable[[], Awaitable[Any]], want: Any, timeout: float = 10) -> None:
    """Wait until ``read()`` gives ``want``; else fail showing what it gave last."""
    deadline = time.monotonic() + timeout
    while (got := await read()) != want and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert got == want


async def test_a_stranded_erasure_leaves_a_job_that_took_its_id_since() -> None:
    from kitium_queue.features.regions.stranded import collect, resubmit

    extra = {"queue_options": {"advanced": {"compliance": {"enabled": True}}}}
    async with region_pair(PORTS["erasure_id_taken"], "people", 5000, **extra) as (m, _):
        jid = await m.add_job("serve", {"m": "ALICE"}, subject_id="alice", job_id="order-1")
        await settle(lambda: state_at(m, EU, jid), "waiting")
        # us erases alice and is deposed before it replicates that.
        assert m.replicator is not None
        await m.replicator.stop()
        assert (await m.region(US).lane.advanced.compliance.erase_subject("alice")).jobs == 1
        got = await collect(m.region(EU), m.region(US), 1)
        assert [(s.id, s.kind) for s in got] == [(jid, "erasure")]

        # Before anyone re-submits it, the job ends at eu and its id is taken by a new
        # job of another subject (a chosen id is free once its job is gone).
        eu = m.region(EU).lane
        assert await eu.remove_job(jid)
        await asyncio.sleep(0.01)  # another creation time
        from kitium_queue.features.regions.copying import apply
        from kitium_queue.features.regions.lua import entry

        now = int(time.time() * 1000)
        new = entry(
            op="put",
            id=jid,
            name="serve",
            data='{"m": "BOB"}',
            opts='{"subject_id":"bob"}',
            priority="0",
            lifo="0",
            created=now,
            state="waiting",
            epoch="2",
            at=now,
        )
        assert await apply(eu, [new]) == ["added"]

        # Re-submitted (twice), the erasure erases nothing of the new job.
        assert await resubmit(m.region(EU), eu, [jid]) == {jid: "gone"}
        assert await resubmit(m.region(EU), eu, [jid]) == {jid: "unknown"}
        assert await state_at(m, EU, jid) == "waiting"
        assert await m.stranded() == []
