"""Workflows: a job under the id of an earlier job whose dependency record failed.

A failed job's dependency record (``dep:<id>``) is kept ``retention_ms``; its job record
may be removed earlier (``remove_job`` of a failed workflow step, whose id holds no
chosen-id window, or ``job_id_window=False``). A new job without dependencies added
under that id is accepted (docs/workflows.md, "Job ids used again"). Its completion was
taken for a replay of the earlier failed job: the earlier record turned ``completed``
with the new job's result, a workflow failed at that step came back (its cancelled
steps ran) and reported completed, a failed parent with ``on_failure="continue"`` showed
its dependents the new job's result. The record is the earlier job's: it stays as it was.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio

from helpers import QueueFactory, wait_until
from kitium_queue import JobStatus
from kitium_queue.features.workflows import JobChainManager

pytestmark = pytest.mark.redis_only


async def test_a_new_job_under_a_failed_steps_id_does_not_revive_its_workflow(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    q = make_queue("wfa")
    chains = JobChainManager(q)
    ran: list[str] = []

    @q.process("x")
    async def x(job: Any) -> Any:
        ran.append(job.id)
        if job.data.get("fail"):
            raise RuntimeError("boom")
        return "new"

    steps = [
        {"name": "a", "job_name": "x", "data": {"fail": True}, "retry_attempts": 0},
        {"name": "b", "job_name": "x", "depends_on": ["a"]},
    ]
    await chains.execute_workflow("w", steps)
    await q.start()

    async def failed() -> bool:
        st = await chains.get_workflow_status("w")
        return st is not None and st.state == "failed"

    await wait_until(failed, 15)
    dk = q.keys.extra("dep:w:a")
    before = await redis_client.hgetall(dk)
    assert before[b"st"] == b"failed"
    assert await q.remove_job("w:a")  # out of the DLQ: its id is free again
    await asyncio.sleep(0.01)  # the new job is created after the record closed

    await q.add_job("x", {}, job_id="w:a")  # a job with neither parents nor workflow

    async def new_done() -> bool:
        st = await q.get_job_status("w:a")
        return st is not None and st.status is JobStatus.COMPLETED

    await wait_until(new_done, 15)
    await asyncio.sleep(0.3)  # a revived step would be claimed by now
    assert "w:b" not in ran
    st = await chains.get_workflow_status("w")
    assert st is not None and st.state == "failed" and st.failed_step == "a"
    assert st.steps["b"].state == "cancelled"
    assert await redis_client.hgetall(dk) == before


async def test_a_new_job_under_a_failed_parents_id_leaves_its_result_to_its_dependents(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    q = make_queue("wfc")
    chains = JobChainManager(q)

    @q.process("x")
    async def x(job: Any) -> Any:
        if job.data.get("fail"):
            raise RuntimeError("old failure")
        return "new"

    await q.add_job(
        "x", {"fail": True}, job_id="P", job_id_window=False, attempts=1, on_failure="continue"
    )
    await q.add_job("k", {}, job_id="K", depends_on=["P"])
    await q.start()

    async def p_failed() -> bool:
        return (await chains.parent_results("K"))["P"].status == "failed"

    await wait_until(p_failed, 15)
    before = await redis_client.hgetall(q.keys.extra("dep:P"))
    assert await q.remove_job("P")
    await asyncio.sleep(0.01)
    await q.add_job("x", {}, job_id="P", job_id_window=False)

    async def new_done() -> bool:
        st = await q.get_job_status("P")
        return st is not None and st.status is JobStatus.COMPLETED

    await wait_until(new_done, 15)
    got = (await chains.parent_results("K"))["P"]
    assert got.status == "failed" and got.result is None
    assert got.error is not None and "old failure" in got.error
    assert await redis_client.hgetall(q.keys.extra("dep:P")) == before
