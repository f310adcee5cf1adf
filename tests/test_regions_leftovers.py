"""Workflows and erasures on a multi-region queue, seen from the secondary, with two
private ``redis-server`` processes as the regions (``us``, the first primary, and
``eu``); docs/workflows.md ("Multi-region queues") and docs/multi-region.md.

* Parents added with ``wait_for_dependencies`` to a job already copied to the
  secondary reach its copy (the job's stored options list them, and the primary
  announces the change): after a failover the job waits for them there. Before, the
  copy kept no parents and ran at once.
* A workflow cancelled at the primary reads ``cancelled`` on the copy, its removed
  steps cancelled. Before, the steps' removals failed the copy's workflow (``failed``,
  at its first removed step).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from helpers import wait_until
from kitium_queue.features.regions import GlobalQueueManager
from kitium_queue.features.workflows import JobChainManager, WorkflowStep
from regionpair import EU, US, region_pair

#: Ports of the private servers, two per test.
PORTS = {
    "depends": 27200,
    "cancel": 27202,
    "late": 27204,
    "erase_stranded": 27206,
    "erase_key": 27208,
}
WORKFLOWS = {"queue_options": {"advanced": {"workflows": {"enabled": True}}}}


@asynccontextmanager
async def two_regions(port: int, **extra: Any) -> AsyncIterator[GlobalQueueManager]:
    async with region_pair(port, "leftovers", 2000, **extra) as (m, _):
        yield m


def chains(m: GlobalQueueManager, region: str) -> JobChainManager:
    made: JobChainManager = m.region(region).lane.advanced.workflows
    return made


async def state_at(m: GlobalQueueManager, region: str, job_id: str) -> str | None:
    info = await m.region(region).lane.get_job_status(job_id)
    return None if info is None else info.status.value


async def dep_at(m: GlobalQueueManager, region: str, job_id: str) -> tuple[str, str]:
    """The job's dependency record there: its state and unfinished parents."""
    lane = m.region(region).lane
    client = await lane.client()
    st, np = await client.hmget(lane.keys.extra(f"dep:{job_id}"), "st", "np")
    return (st.decode() if st else "", np.decode() if np else "")


async def settle(read: Callable[[], Awaitable[Any]], want: Any, timeout: float = 10) -> None:
    """Wait until ``read()`` gives ``want``; else fail showing what it gave last."""
    deadline = time.monotonic() + timeout
    while (got := await read()) != want and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert got == want


class Runs:
    """Records each run (job id, primary then); holds the jobs of ``hold`` until
    ``release(id)``."""

    def __init__(self, m: GlobalQueueManager, hold: tuple[str, ...] = ()) -> None:
        self.m = m
        self.runs: list[tuple[str, str | None]] = []
        self.done: list[str] = []
        self.gates = {jid: asyncio.Event() for jid in hold}

    async def __call__(self, job: Any) -> Any:
        self.runs.append((str(job.id), self.m.primary))
        if str(job.id) in self.gates:
            await self.gates[str(job.id)].wait()
        self.done.append(str(job.id))
        return {"done": str(job.id)}


async def test_parents_added_after_the_copy_hold_it_after_a_failover() -> None:
    async with two_regions(PORTS["depends"], **WORKFLOWS) as m:
        runs = Runs(m, hold=("parent",))
        m.process("work", runs)
        parent = await m.add_job("work", {"n": 1}, job_id="parent")
        child = await m.add_job("work", {"n": 2}, job_id="child")
        await settle(lambda: state_at(m, EU, child), "waiting")
        await settle(lambda: state_at(m, EU, parent), "waiting")

        # The parent is added once the child's copy is made.
        assert await chains(m, US).wait_for_dependencies(child, [parent], on_failure="skip") == 1
        assert await state_at(m, US, child) == "pending"
        # The copy waits for it too, as the primary's job does.
        await settle(lambda: dep_at(m, EU, child), ("pending", "1"))
        assert await state_at(m, EU, child) == "pending"
        lane = m.region(EU).lane
        client = await lane.client()
        assert await client.hget(lane.keys.extra(f"dep:{child}"), "pol") == b"skip"
        # Applied again (a copy made twice), nothing changes.
        assert await m.replicate_job(child, [EU]) == {EU: "exists"}
        assert await dep_at(m, EU, child) == ("pending", "1")

        # After a failover the child runs there once its parent completed, not before.
        await m.failover_to(EU)
        await m.start(concurrency=2)
        await wait_until(lambda: [j for j, _ in runs.runs] == [parent], 10)
        await asyncio.sleep(0.5)
        assert [j for j, _ in runs.runs] == [parent]
        runs.gates[parent].set()
        await wait_until(lambda: runs.done == [parent, child], 10)
        assert runs.runs == [(parent, EU), (child, EU)]


async def test_parents_added_before_the_copy_is_made_are_in_it() -> None:
    async with two_regions(PORTS["late"], **WORKFLOWS) as m:
        warm = await m.add_job("work", {"n": 0}, job_id="warm-up")
        await settle(lambda: state_at(m, EU, warm), "waiting")
        assert m.replicator is not None
        await m.replicator.stop()
        parent = await m.add_job("work", {"n": 1}, job_id="parent")
        child = await m.add_job("work", {"n": 2}, job_id="child")
        assert await chains(m, US).wait_for_dependencies(child, [parent]) == 1
        # Replication resumes: the child's copy is made as the job is now, parents
        # listed in its options.
        await m.replicator.follow_primary()
        await settle(lambda: dep_at(m, EU, child), ("pending", "1"), 20)
        assert await state_at(m, EU, child) == "pending"


async def test_a_cancelled_workflow_reads_cancelled_on_the_copy() -> None:
    steps = [
        WorkflowStep("a", "work", {"n": 1}),
        WorkflowStep("b", "work", {"n": 2}, depends_on=["a"]),
        WorkflowStep("c", "work", {"n": 3}, depends_on=["b"]),
    ]
    async with two_regions(PORTS["cancel"], **WORKFLOWS) as m:
        ids = await chains(m, US).execute_workflow("wf-1", steps)

        async def copied() -> int:
            st = await chains(m, EU).get_workflow_status("wf-1")
            return 0 if st is None else st.total

        await settle(copied, 3)
        assert await chains(m, US).cancel_workflow("wf-1") == 3

        async def seen(region: str) -> tuple[str, dict[str, str], int] | None:
            st = await chains(m, region).get_workflow_status("wf-1")
            if st is None:
                return None
            return st.state, {n: s.state for n, s in st.steps.items()}, st.unfinished

        want = ("cancelled", dict.fromkeys(ids, "cancelled"), 0)
        assert await seen(US) == want
        await settle(lambda: seen(EU), want)
        for jid in ids.values():
            await settle(lambda jid=jid: state_at(m, EU, jid), None)


def compliance_pair(port: int, *, eu: bool = True) -> Any:
    """Both regions; the compliance feature on us, and on eu unless ``eu`` is false."""
    extra = {"queue_options": {"advanced": {"compliance": {"enabled": True}}}} if eu else {}
    return region_pair(port, "people", 5000, **extra)


async def idem_at(m: GlobalQueueManager, region: str, key: str) -> bytes | None:
    lane = m.region(region).lane
    client = await lane.client()
    got: bytes | None = await client.get(lane.keys.extra(f"idem:{key}"))
    return got


async def test_an_erasure_a_deposed_primary_never_replicated_is_reported() -> None:
    from kitium_queue.features.regions.stranded import collect, resubmit

    async with compliance_pair(PORTS["erase_stranded"]) as (m, _):
        jid = await m.add_job("serve", {"m": "ALICE"}, subject_id="alice", idempotency_key="o-1")
        other = await m.add_job("serve", {"m": "BOB"}, subject_id="bob")
        await settle(lambda: state_at(m, EU, jid), "waiting")
        await settle(lambda: state_at(m, EU, other), "waiting")
        # us erases the subject and is deposed before it replicates that.
        assert m.replicator is not None
        await m.replicator.stop()
        report = await m.region(US).lane.advanced.compliance.erase_subject("alice")
        assert report.jobs == 1
        assert await state_at(m, US, jid) is None

        # What us never replicated is compared with eu (the new primary, say).
        got = await collect(m.region(EU), m.region(US), 1)
        assert [(s.id, s.kind, s.region, s.state, s.here) for s in got] == [
            (jid, "erasure", US, "erased", "waiting")
        ]
        listed = await m.stranded()
        assert [(s.id, s.kind) for s in listed] == [(jid, "erasure")]
        # The record keeps nothing of the job's data, its subject or its key.
        lane = m.region(EU).lane
        client = await lane.client()
        kept = await client.hgetall(lane.keys.extra(f"rg:str:{jid}"))
        assert not [v for v in kept.values() if b"ALICE" in v or b"alice" in v or b"o-1" in v]

        # Re-submitted, it erases the job there; the other subject's job stays.
        assert await resubmit(m.region(EU), lane, [jid]) == {jid: "erased"}
        assert await state_at(m, EU, jid) is None
        assert await idem_at(m, EU, "o-1") is None
        assert await state_at(m, EU, other) == "waiting"
        assert await m.stranded() == []


async def test_a_secondary_without_compliance_drops_the_erased_jobs_key() -> None:
    from kitium_queue.features.compliance import ComplianceManager

    async with compliance_pair(PORTS["erase_key"], eu=False) as (m, _):
        compliance = ComplianceManager(m.region(US).lane, run_service=False)
        jid = await m.add_job("serve", {"m": "ALICE"}, subject_id="alice", idempotency_key="o-2")
        await settle(lambda: idem_at(m, EU, "o-2"), jid.encode())
        await compliance.erase_subject("alice")
        await settle(lambda: state_at(m, EU, jid), None)
        assert await idem_at(m, EU, "o-2") is None
        assert await idem_at(m, US, "o-2") is None
