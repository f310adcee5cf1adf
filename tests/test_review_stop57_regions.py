"""Multi-region, adversarial second look, on private ``redis-server`` processes (ports
28400-28499): clock skew between regions in the workflows feature's check of an id used
again."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from kitium_queue.features.regions import GlobalQueueManager
from regionpair import EU, US, region_pair

PORTS = {"skew": 28400, "lag": 28402, "ikey": 28404, "stop": 28406}
WORKFLOWS = {"queue_options": {"advanced": {"workflows": {"enabled": True}}}}
#: How far ahead of the secondary's the primary's clock runs in the skew test (ms).
SKEW_MS = 60_000


async def state_at(m: GlobalQueueManager, region: str, job_id: str) -> str | None:
    info = await m.region(region).lane.get_job_status(job_id)
    return None if info is None else info.status.value


async def settle(read: Callable[[], Awaitable[Any]], want: Any, timeout: float = 15) -> None:
    """Wait until ``read()`` gives ``want``; else fail showing what it gave last."""
    deadline = time.monotonic() + timeout
    while (got := await read()) != want and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert got == want


async def test_a_copy_made_by_a_primary_whose_clock_runs_ahead_is_no_reused_id() -> None:
    """A copy keeps its creation time from the source's clock; its dependency record
    closes here on this server's clock. With the source ahead, the copy's own record
    looked closed *before* the job was created: after a failover, a job that depends on
    the (completed) parent was refused as depending on an id used again."""
    async with region_pair(PORTS["skew"], "skew", 5000, **WORKFLOWS) as (m, _):
        parent = await m.add_job("serve", {"n": 1}, job_id="parent")
        child = await m.add_job("serve", {"n": 2}, job_id="child", depends_on=[parent])
        await settle(lambda: state_at(m, EU, child), "pending")
        # The source's clock runs SKEW_MS ahead of eu's: its copy's creation time says so.
        eu = m.region(EU).lane
        client = await eu.client()
        await client.hincrby(eu.keys.job(parent), "ts", SKEW_MS)

        ran: list[str] = []

        @m.process("serve")
        async def serve(job: Any) -> Any:
            ran.append(str(job.id))
            return {"n": job.data["n"]}

        await m.start()
        await settle(lambda: state_at(m, EU, parent), "completed")
        await settle(lambda: state_at(m, EU, child), "completed")
        await m.failover_to(EU)
        assert m.primary == EU
        late = await m.add_job("serve", {"n": 3}, job_id="late", depends_on=[parent])
        await settle(lambda: state_at(m, EU, late), "completed")
        assert sorted(ran) == sorted([parent, child, late])


async def test_parents_added_within_the_lag_are_waited_for_after_a_failover() -> None:
    """A job given a parent (``wait_for_dependencies``) that was itself added within the
    replication lag: the secondary, catching up at once, copies both, and after a
    failover there the job runs only after its parent."""
    async with region_pair(PORTS["lag"], "lag", 5000, **WORKFLOWS) as (m, _):
        assert m.replicator is not None
        await m.replicator.stop()
        job = await m.add_job("serve", {"n": 1}, job_id="job")
        parent = await m.add_job("serve", {"n": 0}, job_id="parent", delay=1500)
        us = m.region(US).lane
        assert await us.advanced.workflows.wait_for_dependencies(job, [parent]) == 1
        await m.replicator.follow_primary()
        await settle(lambda: state_at(m, EU, job), "pending")
        assert await state_at(m, EU, parent) == "delayed"
        await m.failover_to(EU)
        ran: list[str] = []

        @m.process("serve")
        async def serve(job: Any) -> Any:
            ran.append(str(job.id))
            return {"n": job.data["n"]}

        await m.start()
        await settle(lambda: state_at(m, EU, job), "completed")
        assert ran == [parent, job]


async def test_a_stranded_job_whose_idempotency_key_was_taken_is_not_added_again() -> None:
    """A job the old primary accepted within the lag (idempotency key K) is stranded;
    its producer, told to retry with the same key, added it again at the new primary
    (another id). Re-submitting the stranded job must not add a second job for K."""
    from kitium_queue.features.regions.copying import apply
    from kitium_queue.features.regions.lua import entry
    from kitium_queue.features.regions.stranded import collect, resubmit

    async with region_pair(PORTS["ikey"], "ikey", 5000) as (m, _):
        assert m.replicator is not None
        await m.replicator.stop()
        first = await m.add_job("serve", {"n": 1}, idempotency_key="order-9")
        got = await collect(m.region(EU), m.region(US), 1)
        assert [(s.id, s.kind) for s in got] == [(first, "job")]
        # The retry at the new primary: another job under the same key.
        eu = m.region(EU).lane
        now = int(time.time() * 1000)
        retry = entry(
            op="put",
            id="retried",
            name="serve",
            data='{"n": 1}',
            opts='{"idempotency_key": "order-9"}',
            priority="0",
            lifo="0",
            created=now,
            state="waiting",
            epoch="2",
            ikey="order-9",
            ittl=60_000,
            at=now,
        )
        assert await apply(eu, [retry]) == ["added"]
        out = await resubmit(m.region(EU), eu, [first])
        assert out[first] != "added"
        assert await state_at(m, EU, first) is None
        assert await state_at(m, EU, "retried") == "waiting"


async def test_a_secondary_stopped_mid_copy_catches_up_once_it_resumes() -> None:
    """The secondary's server is stopped (SIGSTOP) while jobs are being copied to it and
    resumed later: every job reaches it once, none lost, none twice."""
    async with region_pair(PORTS["stop"], "stop", 60_000) as (m, servers):
        ids = [await m.add_job("serve", {"n": i}) for i in range(20)]
        pid = servers[1].pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            ids += [await m.add_job("serve", {"n": i}) for i in range(20, 60)]
            await asyncio.sleep(1.5)  # the replicator meets a silent server
        finally:
            os.kill(pid, signal.SIGCONT)

        async def waiting() -> int:
            lane = m.region(EU).lane
            return len(await lane.get_jobs_by_status("waiting", limit=1000))

        await settle(waiting, 60, timeout=30)
        assert [await state_at(m, EU, j) for j in ids] == ["waiting"] * 60
