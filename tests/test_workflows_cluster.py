"""Workflows on a real Redis Cluster (3 masters on loopback, ``tests/_cluster.py``).

* A workflow with a fan-out, a fan-in and each failure policy runs to its end; another
  fails (its pending steps cancelled) and is replayed; one is cancelled; a plain job
  depends on a step. Every key the workflow scripts wrote hashes to the queue's slot,
  and no node ever answered CROSSSLOT.
* On a ``PartitionedQueue`` spread over the masters, each workflow runs on the
  partition (and so the master) its id maps to.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from _cluster import LocalCluster, key_slot
from helpers import wait_for_status, wait_until
from kitium_queue import JobQueue, JobStatus, PartitionedQueue
from kitium_queue.features.workflows import JobChainManager, WorkflowStep

pytestmark = [pytest.mark.redis_only, pytest.mark.timeout(180)]

WIDTH = 30


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(masters=3, replicas=0) as c:
        yield c


@pytest.fixture(autouse=True)
def no_crossslot(cluster: LocalCluster) -> Iterator[None]:
    yield
    assert cluster.crossslot_errors() == {}


def keys_by_master(cluster: LocalCluster, prefix: str) -> dict[int, list[bytes]]:
    out: dict[int, list[bytes]] = {}
    for node in cluster.masters():
        c = cluster.client(node)
        try:
            found = list(c.scan_iter(match=f"{prefix}*", count=1000))
        finally:
            c.close()
        if found:
            out[node.port] = found
    return out


async def ended(chains: JobChainManager, wid: str, state: str) -> Any:
    async def check() -> Any:
        st = await chains.get_workflow_status(wid)
        return st if st is not None and st.state == state and st.unfinished == 0 else None

    return await wait_until(check, 30, message=f"workflow {wid} to be {state}")


def shop(wid_fail: bool = False) -> list[WorkflowStep]:
    """validate -> WIDTH parallel steps (one fails with continue, one with skip) -> sum."""
    kids = [WorkflowStep(f"k{i}", "part", {"i": i}, depends_on=["validate"]) for i in range(WIDTH)]
    kids[3] = WorkflowStep("k3", "boom", {"i": 3}, depends_on=["validate"], on_failure="continue")
    kids[5] = WorkflowStep("k5", "boom", {"i": 5}, depends_on=["validate"], on_failure="skip")
    return [
        WorkflowStep("validate", "part", {"i": -1}),
        *kids,
        WorkflowStep("after5", "part", {"i": 99}, depends_on=["k5"]),
        WorkflowStep("sum", "sum", depends_on=[f"k{i}" for i in range(WIDTH) if i != 5]),
        WorkflowStep("gate", "gate", depends_on=["sum"])
        if wid_fail
        else WorkflowStep("archive", "part", {"i": 100}, depends_on=["sum"]),
    ]


async def test_workflows_on_a_redis_cluster(cluster: LocalCluster, prefix: str) -> None:
    q = JobQueue("wfc", redis=cluster.url, prefix=prefix, worker={"concurrency": 16})
    chains = JobChainManager(q)
    sums: dict[str, Any] = {}
    gate_open = {"open": False}
    hold = asyncio.Event()

    @q.process("part")
    async def part(job: Any) -> int:
        return int(job.data["i"])

    @q.process("boom")
    async def boom(job: Any) -> None:
        raise RuntimeError(f"step {job.data['i']} failed")

    @q.process("sum")
    async def total(job: Any) -> int:
        parents = await chains.parent_results(job)
        sums[job.id] = {k: (p.status, p.result) for k, p in parents.items()}
        return sum(p.result or 0 for p in parents.values())

    @q.process("gate")
    async def gate(job: Any) -> str:
        if not gate_open["open"]:
            raise RuntimeError("gate closed")
        return "open"

    @q.process("slow")
    async def slow(job: Any) -> None:
        await hold.wait()

    try:
        await chains.execute_workflow("shop-1", shop())
        await chains.execute_workflow(
            "shop-2",
            [*shop(wid_fail=True), WorkflowStep("ship", "part", {"i": 7}, depends_on=["gate"])],
        )
        await chains.execute_workflow(
            "hold-1",
            [WorkflowStep("a", "slow"), WorkflowStep("b", "part", {"i": 0}, depends_on=["a"])],
        )
        later = await q.add_job("part", {"i": 1000}, depends_on=["shop-1:archive"])
        await q.start()
        st = await ended(chains, "shop-1", "completed")
        assert st.counts == {"completed": WIDTH + 1, "dlq": 2, "skipped": 1}
        assert st.steps["after5"].state == "skipped"
        seen = sums["shop-1:sum"]
        assert seen["k3"][0] == "failed" and "k5" not in seen
        assert sum(r or 0 for _, r in seen.values()) == sum(range(WIDTH)) - 3 - 5
        await wait_for_status(q, later, JobStatus.COMPLETED, timeout=15)
        assert (await chains.parent_results(later))["archive"].result == 100
        # A dead-lettered step fails its workflow; its replay brings it back.
        st = await ended(chains, "shop-2", "failed")
        assert st.failed_step == "gate" and st.steps["ship"].state == "cancelled"
        gate_open["open"] = True
        assert (await q.get_job_status("shop-2:gate")).status is JobStatus.DLQ  # type: ignore[union-attr]
        await q.retry_job("shop-2:gate")
        st = await ended(chains, "shop-2", "completed")
        assert st.steps["ship"].state == "completed"
        assert await chains.cancel_workflow("hold-1") == 1
        hold.set()
        await ended(chains, "hold-1", "cancelled")
        ids = [r.workflow_id for r in await chains.list_workflows()]
        assert sorted(ids) == ["hold-1", "shop-1", "shop-2"]
    finally:
        await q.close()
    # Every key of the queue and of its workflows sits in the queue's one slot.
    slot = key_slot(q.keys.wait)
    found = keys_by_master(cluster, prefix)
    assert len(found) == 1, f"keys on several masters: {sorted(found)}"
    names = next(iter(found.values()))
    assert any(b":dep:" in k for k in names) and any(b":wf:" in k for k in names)
    assert {key_slot(k) for k in names} == {slot}


async def test_partitioned_workflows_on_a_redis_cluster(cluster: LocalCluster, prefix: str) -> None:
    pq = PartitionedQueue(
        "wfp", partitions=3, redis=cluster.url, prefix=prefix, worker={"concurrency": 12}
    )
    chains = JobChainManager(pq)
    ran_on: dict[str, set[str]] = {}

    @pq.process("n")
    async def n(job: Any) -> int:
        wid = job.id.split(":", 1)[0]
        ran_on.setdefault(wid, set()).add(job.queue_name)
        return 1

    @pq.process("join")
    async def join(job: Any) -> int:
        return len(await chains.parent_results(job))

    # Three workflows on each partition.
    wids: list[str] = []
    for i in range(200):
        if sum(pq.partition_of(w) == pq.partition_of(f"w{i}") for w in wids) < 3:
            wids.append(f"w{i}")
    assert len(wids) == 9
    try:
        for wid in wids:
            await chains.execute_workflow(
                wid,
                [
                    WorkflowStep("a", "n"),
                    *(WorkflowStep(f"b{i}", "n", depends_on=["a"]) for i in range(5)),
                    WorkflowStep("c", "join", depends_on=[f"b{i}" for i in range(5)]),
                ],
            )
        await pq.start()
        for wid in wids:
            st = await ended(chains, wid, "completed")
            assert st.counts == {"completed": 7}
            assert ran_on[wid] == {pq.queues[pq.partition_of(wid)].name}
            info = await pq.get_job_status(st.steps["c"].job_id)
            assert info is not None and info.result == 5
    finally:
        await pq.close()
    # Each partition's keys on one master, in its own slot; the partitions on 3 masters.
    found = keys_by_master(cluster, prefix)
    assert len(found) == 3
    for q in pq.queues:
        slot = key_slot(q.keys.wait)
        master = cluster.master_for_slot(slot).port
        mine = [k for k in found[master] if f"{{{q.name}}}".encode() in k]
        assert mine and {key_slot(k) for k in mine} == {slot}
