"""Review of workflows on multi-region queues (regions x workflows): scenarios on two
private ``redis-server`` processes (ports 26340-26359) and on a plain queue."""

from __future__ import annotations

import json
from typing import Any

import pytest

from helpers import QueueFactory, wait_until
from kitium_queue import FencedError, JobStateError
from kitium_queue.features.groups import FIFOQueueManager
from kitium_queue.features.workflows import JobChainManager, WorkflowStep
from test_regions_workflows_secondary import (
    EU,
    US,
    settle,
    state_at,
    states_at,
    two_regions,
)

WID = "rv-1"


async def test_a_step_removed_on_completion_before_its_copy_does_not_strand_its_dependents() -> (
    None
):
    steps = [
        WorkflowStep("a", "step", {"n": 1}, options={"remove_on_complete": True}),
        WorkflowStep("b", "step", {"n": 2}, depends_on=["a"]),
    ]
    async with two_regions(26340) as m:
        chains = {r: JobChainManager(m.region(r).lane) for r in (US, EU)}
        ran: list[tuple[str, Any]] = []

        async def proc(job: Any) -> Any:
            step = str(job.id).rsplit(":", 1)[1]
            ran.append((step, m.primary))
            if step == "a":
                await m.region(US).lane.pause()  # b stays waiting at us
            return {"done": step}

        m.process("step", proc)
        first = await m.add_job("step", {"n": 0}, job_id="warm:0")
        await settle(lambda: state_at(m, EU, first), "waiting")
        assert m.replicator is not None
        await m.replicator.stop()
        await m.start(concurrency=2)
        ids = await chains[US].execute_workflow(WID, steps)
        await settle(lambda: states_at(m, US, ids), {"a": None, "b": "paused"})
        await m.replicator.follow_primary()
        # a's copy arrives from its outcome (its job is gone at us), finished: b is
        # released there, and runs once after a failover. b's copy may be applied in a
        # batch of its own before a's outcome (it is pending there either way): wait for
        # the workflow as a whole.

        async def steps_at_eu() -> dict[str, str] | None:
            st = await chains[EU].get_workflow_status(WID)
            return None if st is None else {n: s.state for n, s in st.steps.items()}

        await settle(steps_at_eu, {"a": "completed", "b": "pending"})
        assert await state_at(m, EU, ids["b"]) == "pending"
        await m.failover_to(EU)
        await settle(lambda: state_at(m, EU, ids["b"]), "completed")
        assert ran == [("0", US), ("a", US), ("b", EU)]


FOUR = [
    WorkflowStep("a", "step", {"n": 1}),
    WorkflowStep("b", "step", {"n": 2}, depends_on=["a"]),
    WorkflowStep("c", "step", {"n": 3}, depends_on=["a"]),
    WorkflowStep("d", "step", {"n": 4}, depends_on=["b", "c"]),
]


async def copy_by_hand(m: Any, ids: list[str], times: int = 1) -> list[str]:
    """Copy jobs ``ids`` from us to eu as they are now, one apply each, in that order."""
    from kitium_queue.features.regions.copying import apply, as_entry, export

    out: list[str] = []
    for _ in range(times):
        for jid in ids:
            rows = await export(m.region(US).lane, [jid])
            out += await apply(m.region(EU).lane, [as_entry(r, "put") for r in rows], region=EU)
    return out


async def test_copies_applied_backwards_and_twice_give_the_primarys_workflow() -> None:
    async with two_regions(26342) as m:
        chains = {r: JobChainManager(m.region(r).lane) for r in (US, EU)}
        done: list[str] = []

        async def proc(job: Any) -> Any:
            done.append(str(job.id))
            return {"n": job.data["n"]}

        m.process("step", proc)
        first = await m.add_job("step", {"n": 0}, job_id="warm:0")
        await settle(lambda: state_at(m, EU, first), "waiting")
        assert m.replicator is not None
        await m.replicator.stop()
        ids = await chains[US].execute_workflow(WID, FOUR)
        order = [ids[s] for s in "dcba"]
        assert await copy_by_hand(m, order, times=2) == ["added"] * 4 + ["exists"] * 4
        st = await chains[EU].get_workflow_status(WID)
        assert st is not None and (st.state, st.total, st.unfinished) == ("running", 4, 4)
        assert {n: (s.state, s.depends_on) for n, s in st.steps.items()} == {
            "a": ("waiting", []),
            "b": ("pending", ["a"]),
            "c": ("pending", ["a"]),
            "d": ("pending", ["b", "c"]),
        }
        await m.start(concurrency=2)
        await wait_until(lambda: len(done) == 5, 10)
        await settle(lambda: states_at(m, US, ids), dict.fromkeys(ids, "completed"))
        # Finished copies, the fan-in's first: ended once each, the workflow with them.
        assert await copy_by_hand(m, order, times=2) == ["ended"] * 4 + ["exists"] * 4
        st = await chains[EU].get_workflow_status(WID)
        assert st is not None
        assert (st.state, st.unfinished, st.counts) == ("completed", 0, {"completed": 4})
        got = await chains[EU].parent_results(ids["d"])
        assert {k: p.result for k, p in got.items()} == {"b": {"n": 2}, "c": {"n": 3}}


async def test_a_single_region_queue_stores_no_parents_and_compiles_no_fence(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("rv54")
    chains = JobChainManager(q)
    FIFOQueueManager(q)  # a feature with a release fragment, enabled after workflows
    ids = await chains.execute_workflow(WID, FOUR)
    for s, jid in ids.items():
        client = await q.client()
        raw = await client.hget(q.keys.job(jid), "o")
        assert json.loads(raw) == {"workflow_id": WID, "workflow_step": s, "attempts": 1}
    assert "fence_slot" not in q.scripts.get("wf_create").source
    assert q.scripts.slot_names("release") == ["fifo-groups", "workflows"]


async def test_after_a_failover_the_same_workflow_id_is_taken_and_the_old_primary_fenced() -> None:
    async with two_regions(26344) as m:
        chains = {r: JobChainManager(m.region(r).lane) for r in (US, EU)}
        ids = await chains[US].execute_workflow(WID, FOUR)
        with pytest.raises(JobStateError):
            await chains[US].execute_workflow(WID, FOUR)
        await settle(
            lambda: states_at(m, EU, ids), {"a": "waiting", **dict.fromkeys("bcd", "pending")}
        )
        await m.failover_to(EU)
        # The copy's workflow is the workflow: its id stays taken at the new primary...
        with pytest.raises(JobStateError):
            await chains[EU].execute_workflow(WID, FOUR)
        # ...and the former primary, fenced, writes nothing.
        with pytest.raises(FencedError):
            await chains[US].execute_workflow("rv-2", FOUR)
        assert await chains[US].get_workflow_status("rv-2") is None
        st = await chains[EU].get_workflow_status(WID)
        assert st is not None and (st.state, st.total, st.unfinished) == ("running", 4, 4)
