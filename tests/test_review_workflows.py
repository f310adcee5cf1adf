"""Workflows at their limits, against a real Redis (``features/workflows``).

* The parent-step pairs of a workflow written at once are capped (``MAX_EDGES``):
  ``wf_create.lua`` writes every pair in its one script call, so 400 parents shared by
  251 steps (100,400 pairs, about half a second of Redis time, many seconds within the
  64 MiB of arguments a workflow may send) are refused before anything is written.
* A running workflow cannot grow past ``MAX_STEPS`` through ``add_job(...,
  workflow_id=...)``: its end, failure and cancel walk every step in one script.
* ``wait_for_dependencies`` on a job others depend on says so (a cycle could close),
  rather than that the job "has dependencies already".
"""

from __future__ import annotations

from typing import Any

import pytest

from helpers import QueueFactory
from kitium_queue import ConfigurationError, JobRefusedError, JobStatus
from kitium_queue.errors import JobStateError
from kitium_queue.features.workflows import JobChainManager, WorkflowStep
from kitium_queue.features.workflows.lua import MAX_EDGES, MAX_STEPS

pytestmark = [pytest.mark.redis_only]


async def test_a_workflow_with_too_many_dependencies_is_refused_before_writing(
    make_queue: QueueFactory, redis_client: Any
) -> None:
    q = make_queue("wfe")
    chains = JobChainManager(q, events=False)
    roots = [f"r{i}" for i in range(400)]
    kids = MAX_EDGES // len(roots) + 1
    steps = [WorkflowStep(r, "t") for r in roots] + [
        WorkflowStep(f"k{i}", "t", depends_on=roots) for i in range(kids)
    ]
    with pytest.raises(ConfigurationError, match="dependencies in all"):
        await chains.execute_workflow("wide", steps)
    assert await chains.get_workflow_status("wide") is None
    assert await redis_client.exists(q.keys.job("wide:r0")) == 0
    # At the limit it is written.
    at_limit = [WorkflowStep(r, "t") for r in roots] + [
        WorkflowStep(f"k{i}", "t", depends_on=roots) for i in range(MAX_EDGES // len(roots))
    ]
    await chains.execute_workflow("wide-ok", at_limit)
    st = await chains.get_workflow_status("wide-ok")
    assert st is not None and st.total == len(at_limit)


async def test_add_job_cannot_grow_a_workflow_past_its_most_steps(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("wfs")
    chains = JobChainManager(q, events=False)
    await chains.execute_workflow("big", [WorkflowStep(f"s{i}", "t") for i in range(MAX_STEPS)])
    with pytest.raises(JobRefusedError, match=f"has {MAX_STEPS} steps"):
        await q.add_job("t", None, workflow_id="big", workflow_step="one-more")
    st = await chains.get_workflow_status("big")
    assert st is not None and st.total == MAX_STEPS and "one-more" not in st.steps
    assert await q.get_job_status("one-more") is None
    # A workflow below the limit still takes new steps.
    await chains.execute_workflow("small", [WorkflowStep("a", "t")])
    await q.add_job("t", None, workflow_id="small", workflow_step="b", depends_on=["small:a"])
    st = await chains.get_workflow_status("small")
    assert st is not None and st.total == 2


async def test_wait_for_dependencies_on_a_parent_names_its_dependents(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("wfd")
    chains = JobChainManager(q, events=False)
    await q.add_job("t", None, job_id="a")
    await q.add_job("t", None, job_id="c")
    await q.add_job("t", None, job_id="b", depends_on=["a"])
    # a -> b; b -> a would be a cycle; c -> a is refused alike, and says why.
    for deps in (["b"], ["c"]):
        with pytest.raises(JobStateError, match="has dependents") as err:
            await chains.wait_for_dependencies("a", deps)
        assert "dependencies already" not in str(err.value)
    # A job that has dependencies says that.
    with pytest.raises(JobStateError, match="has dependencies already"):
        await chains.wait_for_dependencies("b", ["c"])
    assert (await q.get_job_status("a")).status is JobStatus.WAITING  # type: ignore[union-attr]
    assert (await q.get_job_status("b")).status is JobStatus.PENDING  # type: ignore[union-attr]
