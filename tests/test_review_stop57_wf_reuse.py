"""Workflows: a job id used again is still found out once a dependency record keeps the
creation time of the job it tracked.

A dependency record (``dep:<id>``) closing keeps ``jt``, the creation time (``ts``) of
the job it tracked, and a job now under that id is another one when its creation time
differs from it (docs/workflows.md, "Job ids used again"): the job is compared with
itself, not one clock with another (a copy made by a region whose clock runs ahead was
refused as an id used again: tests/test_review_stop57_regions.py). Here, on one queue,
a new job really added under the id of a finished one is still refused as a parent; so
it is when this server's clock stepped back since the record closed (its close time
then lies after the new job's creation), and for a record closed without ``jt`` (written
before it was kept), which is judged by its close time as before.
"""

from __future__ import annotations

from typing import Any

import pytest

from helpers import QueueFactory, wait_until
from kitium_queue import JobQueue, JobRefusedError, JobStatus
from kitium_queue.features.workflows import JobChainManager


async def _reused_parent(q: JobQueue) -> None:
    """Job ``P`` completed (its record ``dep:P`` closed, followed by ``D1``), was removed,
    and a new job was added under its id."""
    chains = JobChainManager(q)

    @q.process("p")
    async def p(job: Any) -> Any:
        return "old"

    await q.add_job("p", {}, job_id="P", job_id_window=False)
    await q.add_job("k", {}, job_id="D1", depends_on=["P"])
    await q.start()

    async def p_done() -> bool:
        got = await chains.parent_results("D1")
        return got["P"].status == "completed"

    await wait_until(p_done, 30)
    await q.worker.stop(timeout_ms=500)  # type: ignore[union-attr]
    assert await q.remove_job("P")
    await q.add_job("p", {}, job_id="P", job_id_window=False)  # the id used again
    got = await q.get_job_status("P")
    assert got is not None and got.status is JobStatus.WAITING


@pytest.mark.parametrize("record", ["as_closed", "clock_stepped_back", "without_jt"])
async def test_a_job_id_really_used_again_is_still_refused_as_a_parent(
    make_queue: QueueFactory, record: str
) -> None:
    q = make_queue("wfu")
    await _reused_parent(q)
    client = await q.client()
    dep = q.keys.extra("dep:P")
    assert await client.hexists(dep, "jt")
    if record == "clock_stepped_back":
        # This server's clock was a minute ahead when the record closed.
        await client.hincrby(dep, "f", 60_000)
    elif record == "without_jt":
        await client.hdel(dep, "jt")
    with pytest.raises(JobRefusedError, match=r"depends on job P, whose id was used again"):
        await q.add_job("k", {}, job_id="D2", depends_on=["P"])
    assert await q.get_job_status("D2") is None
    assert await client.smembers(q.keys.extra("dep-c:P")) == {b"D1"}
