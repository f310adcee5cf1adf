"""Workflows on a multi-region queue, seen from a secondary region, with two private
``redis-server`` processes as the regions (``us``, the first primary, and ``eu``).

* Every region's queue has the workflows feature (``JobChainManager`` on each region's
  copy of the global queue, or ``queue_options`` with the ``advanced`` workflows
  section): a workflow created at the primary (a fan-out and a fan-in) is copied to
  the secondary step by step, each copy recorded as the primary has it (its parents,
  its workflow, a parent's result), nothing refused and nothing logged; after a planned
  failover the workflow finishes at the former secondary, every step run once, its
  parents' results handed on, and that region's ``JobChainManager`` reports it
  completed. Before, the secondary refused every copy of a step ("workflow ... is not
  running": nothing of the workflow was there to fail over to), and a step's parents
  were not in its options, so a copy could not have waited for them anyway.
* A step that fails for good under ``fail_workflow`` cancels its dependents on the
  copy too, and a replay of it at the new primary after a failover brings them back
  and completes the workflow there. With the feature enabled before the regions (from
  ``queue_options``) the copy recorded the wrong failed step: the feature's release
  fragment ran before the regions', so the cancelled steps' removals reached the copy
  before the failure that caused them.
* Copies made after their steps finished (replication stopped meanwhile): the copy's
  workflow, ended early by the copies of its finished steps, goes on when the copy of
  an unfinished one comes, and ends with it; a copy reports no workflow event.
* A fan-in whose parents' ids are more than a producer's options may hold is copied
  with every parent.
* A secondary whose queue lacks the feature stores the copies as plain jobs (nothing is
  lost: each step runs once after a failover) and the replicator says so as an error
  naming the feature and how to enable it.
* ``execute_workflow`` on a secondary's copy is fenced like ``add_job`` (before, it wrote
  the workflow there, where nothing replicates it and it ran after a failover only).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from helpers import wait_until
from kitium_queue import FencedError, NonRetryableError
from kitium_queue.features.regions import GlobalQueueManager
from kitium_queue.features.workflows import JobChainManager, WorkflowStep
from regionpair import EU, US, region_pair

#: Ports of the private servers, two per test (tests may run in parallel).
PORTS = {
    "by_hand": 26300,
    "missing": 26302,
    "fenced": 26304,
    "replay": 26306,
    "wide": 26308,
    "late": 26310,
}
WID = "order-7"
STEPS = [
    WorkflowStep("a", "step", {"n": 1}),
    WorkflowStep("b", "step", {"n": 2}, depends_on=["a"]),
    WorkflowStep("c", "step", {"n": 3}, depends_on=["a"]),
    WorkflowStep("d", "step", {"n": 4}, depends_on=["b", "c"], data_transformer="collect"),
]
PARENTS = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}


@asynccontextmanager
async def two_regions(port: int, **extra: Any) -> AsyncIterator[GlobalQueueManager]:
    """A manager over two regions on private servers at ``port`` and ``port + 1``."""
    async with region_pair(port, "orders", 2000, **extra) as (m, _):
        yield m


def collect(data: Any, parents: dict[str, Any]) -> Any:
    """The fan-in's transformer: its parents' results, by step."""
    return {**data, "parents": {k: p.result for k, p in parents.items()}}


class Steps:
    """The processor of every step: records each run (step, primary then, data), holds
    the steps of ``hold`` until ``release(step)``, and fails the steps of ``fail`` for
    good once ``c`` started (so that their failure finds ``c`` running, not waiting)."""

    def __init__(self, m: GlobalQueueManager, hold: tuple[str, ...] = ()) -> None:
        self.m = m
        self.runs: list[tuple[str, str | None, Any]] = []
        self.gates = {step: asyncio.Event() for step in hold}
        self.fail: set[str] = set()

    def release(self, step: str) -> None:
        self.gates[step].set()

    async def __call__(self, job: Any) -> Any:
        step = str(job.id).rsplit(":", 1)[1]
        self.runs.append((step, self.m.primary, job.data))
        if step in self.gates:
            await self.gates[step].wait()
        if step in self.fail:
            await wait_until(lambda: "c" in self.ran(), 10)
            raise NonRetryableError(f"step {step} cannot go on")
        return {"done": step, "n": job.data["n"]}

    def ran(self) -> dict[str, list[str | None]]:
        out: dict[str, list[str | None]] = {}
        for step, where, _ in self.runs:
            out.setdefault(step, []).append(where)
        return out


async def state_at(m: GlobalQueueManager, region: str, job_id: str) -> str | None:
    info = await m.region(region).lane.get_job_status(job_id)
    return None if info is None else info.status.value


async def states_at(m: GlobalQueueManager, region: str, ids: dict[str, str]) -> dict[str, Any]:
    return {step: await state_at(m, region, jid) for step, jid in ids.items()}


async def step_states(chains: JobChainManager) -> dict[str, str]:
    st = await chains.get_workflow_status(WID)
    return {} if st is None else {n: s.state for n, s in st.steps.items()}


async def deps_at(
    m: GlobalQueueManager, region: str, ids: dict[str, str]
) -> dict[str, tuple[str, str]]:
    """Each step's dependency record there (docs/workflows.md, "Retention and keys"):
    its state and its count of unfinished parents."""
    lane = m.region(region).lane
    client = await lane.client()
    out = {}
    for step, jid in ids.items():
        st, np = await client.hmget(lane.keys.extra(f"dep:{jid}"), "st", "np")
        out[step] = (st.decode() if st else "", np.decode() if np else "")
    return out


async def workflow_log(m: GlobalQueueManager, region: str) -> list[str]:
    """The workflow events logged there for the in-process report (``wf-log``)."""
    lane = m.region(region).lane
    client = await lane.client()
    return [f[b"e"].decode() for _, f in await client.xrange(lane.keys.extra("wf-log"))]


async def slot_errors(m: GlobalQueueManager, region: str) -> dict[bytes, bytes]:
    lane = m.region(region).lane
    client = await lane.client()
    return dict(await client.hgetall(lane.keys.extra("slot-errors")))


def problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith("kitium_queue")
    ]


def chains_at(m: GlobalQueueManager) -> dict[str, JobChainManager]:
    """The workflows feature on each region's copy of the global queue, as on any queue,
    with the fan-in's transformer."""
    chains = {r: JobChainManager(m.region(r).lane) for r in (US, EU)}
    for c in chains.values():
        c.register_transformer("collect", collect)
    return chains


async def test_a_workflow_copied_to_a_secondary_finishes_there_after_a_failover(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="kitium_queue")
    async with two_regions(PORTS["by_hand"]) as m:
        # The feature on each region's copy of the global queue, as on any queue.
        chains = chains_at(m)
        steps = Steps(m, hold=("a",))
        m.process("step", steps)
        ids = await chains[US].execute_workflow(WID, STEPS)

        # Copied as the primary has it: the root waiting, the others waiting for their
        # parents, in a running workflow of four steps.
        want = {"a": "waiting", "b": "pending", "c": "pending", "d": "pending"}
        await settle(lambda: step_states(chains[EU]), want)
        copy = await chains[EU].get_workflow_status(WID)
        assert copy is not None
        assert (copy.state, copy.total, copy.unfinished) == ("running", 4, 4)
        assert {n: s.depends_on for n, s in copy.steps.items()} == PARENTS
        assert await states_at(m, EU, ids) == want
        assert m.replicator is not None and m.replicator.refused == 0

        # The root runs at the primary; its result reaches the copy and releases the
        # fan-out there too, the fan-in still waiting for both of its parents.
        await m.start(concurrency=4)
        await wait_until(lambda: steps.ran() == {"a": [US]}, 10)
        await m.region(US).lane.pause()  # what a releases is left to the next primary
        steps.release("a")
        # (Released, b and c are moved to wait by the first claim there: a copy hands
        # nothing out until it is the primary.)
        await settle(lambda: state_at(m, EU, ids["a"]), "completed")
        assert await deps_at(m, EU, ids) == {
            "a": ("completed", "0"),
            "b": ("ready", "0"),
            "c": ("ready", "0"),
            "d": ("pending", "2"),
        }
        b_parents = await chains[EU].parent_results(ids["b"])
        assert {k: (p.status, p.result) for k, p in b_parents.items()} == {
            "a": ("completed", {"done": "a", "n": 1})
        }

        # A planned failover: the former secondary runs the rest, each step once.
        await m.failover_to(EU)
        assert m.primary == EU

        async def completed() -> bool:
            st = await chains[EU].get_workflow_status(WID)
            return st is not None and st.state == "completed"

        await wait_until(completed, 15)
        await asyncio.sleep(0.3)  # a second run of anything would show by now
        assert steps.ran() == {"a": [US], "b": [EU], "c": [EU], "d": [EU]}
        fan_in = next(data for step, _, data in steps.runs if step == "d")
        assert fan_in["parents"] == {
            "b": {"done": "b", "n": 2},
            "c": {"done": "c", "n": 3},
        }
        final = await chains[EU].get_workflow_status(WID)
        assert final is not None
        assert (final.total, final.unfinished, final.counts) == (4, 0, {"completed": 4})
        assert await states_at(m, EU, ids) == dict.fromkeys(ids, "completed")
        assert (await m.region(EU).lane.get_stats()).dlq == 0
        assert await slot_errors(m, EU) == {}
        assert problems(caplog) == []


async def test_a_failed_step_replayed_after_a_failover_completes_its_workflow_there(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="kitium_queue")
    # The feature from queue_options: enabled on each region's queue as it is built,
    # before the regions feature.
    extra = {"queue_options": {"advanced": {"workflows": {"enabled": True}}}}
    async with two_regions(PORTS["replay"], **extra) as m:

        def chains(region: str) -> JobChainManager:
            made: JobChainManager = m.region(region).lane.advanced.workflows
            return made

        for r in (US, EU):
            chains(r).register_transformer("collect", collect)
        steps = Steps(m)
        steps.fail.add("b")
        m.process("step", steps)
        ids = await chains(US).execute_workflow(WID, STEPS)

        async def copied() -> bool:
            return len(await step_states(chains(EU))) == 4

        await wait_until(copied, 10)
        await m.start(concurrency=4)

        async def failed_at(region: str) -> bool:
            st = await chains(region).get_workflow_status(WID)
            return st is not None and st.state == "failed" and st.unfinished == 0

        await wait_until(lambda: failed_at(US), 10)
        # The copy draws the same: b failed it, its fan-in cancelled.
        await wait_until(lambda: failed_at(EU), 10)
        for r in (US, EU):
            st = await chains(r).get_workflow_status(WID)
            assert st is not None and st.failed_step == "b", (r, st)
            assert {n: s.state for n, s in st.steps.items()} == {
                "a": "completed",
                "b": "dlq",
                "c": "completed",
                "d": "cancelled",
            }, r
        await settle(lambda: state_at(m, EU, ids["b"]), "dlq")
        assert await workflow_log(m, US) == ["workflow-failed"]
        assert await workflow_log(m, EU) == []

        await m.failover_to(EU)
        steps.fail.clear()
        assert await m.replay_dlq() == 1

        async def completed() -> bool:
            st = await chains(EU).get_workflow_status(WID)
            return st is not None and st.state == "completed"

        await wait_until(completed, 15)
        await asyncio.sleep(0.3)
        assert steps.ran() == {"a": [US], "b": [US, EU], "c": [US], "d": [EU]}
        assert await workflow_log(m, EU) == ["workflow-completed"]
        fan_in = next(data for step, _, data in steps.runs if step == "d")
        assert fan_in["parents"] == {"b": {"done": "b", "n": 2}, "c": {"done": "c", "n": 3}}
        assert await slot_errors(m, EU) == {}
        assert [p for p in problems(caplog) if "refused" in p or "option" in p] == []


async def test_copies_made_after_their_steps_finished_rebuild_the_workflow() -> None:
    async with two_regions(PORTS["late"]) as m:
        chains = chains_at(m)
        steps = Steps(m, hold=("d",))
        m.process("step", steps)
        # eu follows the primary's stream (its first copy, made whole, is done).
        first = await m.add_job("step", {"n": 0}, job_id="warm-up:0")
        await settle(lambda: state_at(m, EU, first), "waiting")
        await m.start(concurrency=4)
        # Replication stops (its process is gone, say) while the workflow runs at us: a,
        # b and c complete, d runs; eu's entries wait in the outbox.
        assert m.replicator is not None
        await m.replicator.stop()
        ids = await chains[US].execute_workflow(WID, STEPS)
        await wait_until(lambda: "d" in steps.ran(), 10)
        assert await states_at(m, US, ids) == {
            "a": "completed",
            "b": "completed",
            "c": "completed",
            "d": "active",
        }
        assert await chains[EU].get_workflow_status(WID) is None
        await m.replicator.follow_primary()
        # Back, eu gets the backlog, each job copied as it is now: the copies of a, b
        # and c come finished before d's, which is not; the workflow goes on there.
        want = {"a": "completed", "b": "completed", "c": "completed", "d": "waiting"}
        await settle(lambda: step_states(chains[EU]), want, 20)
        copy = await chains[EU].get_workflow_status(WID)
        assert copy is not None
        assert (copy.state, copy.total, copy.unfinished) == ("running", 4, 1)
        assert await deps_at(m, EU, ids) == {
            "a": ("completed", "0"),
            "b": ("completed", "0"),
            "c": ("completed", "0"),
            "d": ("ready", "0"),
        }
        d_parents = await chains[EU].parent_results(ids["d"])
        assert {k: p.result for k, p in d_parents.items()} == {
            "b": {"done": "b", "n": 2},
            "c": {"done": "c", "n": 3},
        }

        # d's outcome ends the workflow there too, and its records expire as a
        # finished workflow's do.
        steps.release("d")

        async def completed_at_eu() -> bool:
            st = await chains[EU].get_workflow_status(WID)
            return st is not None and st.state == "completed" and st.unfinished == 0

        await wait_until(completed_at_eu, 10)
        # Reported once, by the region that ran it: the copy reports nothing.
        assert await workflow_log(m, US) == ["workflow-completed"]
        assert await workflow_log(m, EU) == []
        await m.failover_to(EU)
        await asyncio.sleep(0.3)
        assert steps.ran() == {"0": [US], "a": [US], "b": [US], "c": [US], "d": [US]}
        st = await chains[EU].get_workflow_status(WID)
        assert st is not None and (st.state, st.total, st.counts) == (
            "completed",
            4,
            {"completed": 4},
        )
        lane = m.region(EU).lane
        client = await lane.client()
        for jid in ids.values():
            assert await client.pttl(lane.keys.extra(f"dep:{jid}")) > 0, jid


async def test_a_fan_in_with_more_parents_than_options_hold_is_copied_whole() -> None:
    # 4,000 parent ids are about 70 KB of JSON, more than a producer's options may hold
    # (64 KiB): a step's stored options list its parents all the same, for its copies.
    wide = [WorkflowStep(f"p{i:04d}", "step", {"n": i}) for i in range(4000)]
    sink = WorkflowStep("sink", "step", {"n": -1}, depends_on=[s.name for s in wide])
    # Writing 4,001 steps holds the primary's server a while: a lease long enough that a
    # loaded machine's late renewal is no lost lease (the test is about the copy).
    async with region_pair(PORTS["wide"], "orders", 10_000) as (m, _):
        chains = {r: JobChainManager(m.region(r).lane) for r in (US, EU)}
        ids = await chains[US].execute_workflow(WID, [*wide, sink])
        await settle(lambda: state_at(m, EU, ids["sink"]), "pending", 20)
        assert await deps_at(m, EU, {"sink": ids["sink"]}) == {"sink": ("pending", "4000")}
        copy = await chains[EU].get_workflow_status(WID)
        assert copy is not None and (copy.total, copy.unfinished) == (4001, 4001)
        assert copy.steps["sink"].depends_on == [s.name for s in wide]


async def test_a_secondary_without_the_feature_keeps_plain_copies_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="kitium_queue.features.regions")
    async with two_regions(PORTS["missing"]) as m:
        chains = JobChainManager(m.region(US).lane)  # the primary's queue only
        chains.register_transformer("collect", collect)
        steps = Steps(m)
        m.process("step", steps)
        ids = await chains.execute_workflow(WID, STEPS)

        # Nothing is lost: every step is copied, as a plain job (no dependencies there)...
        await settle(lambda: states_at(m, EU, ids), dict.fromkeys(ids, "waiting"))
        # ...and the replicator says why, and what to do.
        said = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert any(
            f"region {EU}" in s
            and "'workflow_id'" in s
            and "workflows" in s
            and "JobChainManager(queue)" in s
            and "manager.region(name).lane" in s
            for s in said
        ), said

        # After a failover each step runs there once (without waiting for its parents:
        # the region's queue has no workflows feature).
        await m.failover_to(EU)
        await m.start(concurrency=4)
        await settle(lambda: states_at(m, EU, ids), dict.fromkeys(ids, "completed"), 15)
        await asyncio.sleep(0.3)
        assert steps.ran() == {s: [EU] for s in ids}


async def test_execute_workflow_on_a_secondary_is_fenced() -> None:
    async with two_regions(PORTS["fenced"]) as m:
        chains = JobChainManager(m.region(EU).lane)
        chains.register_transformer("collect", collect)
        with pytest.raises(FencedError, match="not the primary"):
            await chains.execute_workflow(WID, STEPS)
        assert await chains.get_workflow_status(WID) is None
        assert await states_at(m, EU, {s.name: f"{WID}:{s.name}" for s in STEPS}) == dict.fromkeys(
            PARENTS
        )


async def settle(read: Callable[[], Awaitable[Any]], want: Any, timeout: float = 10) -> None:
    """Wait until ``read()`` gives ``want``; else fail showing what it gave last."""
    deadline = time.monotonic() + timeout
    while (got := await read()) != want and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert got == want
