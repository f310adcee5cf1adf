"""Workflows' kept step definitions and the compliance feature: a step its failed
workflow cancels keeps its data, options and the other features' markers (``sd``,
``so``, ``sm`` on ``dep:<id>``) until a replay of the failed step brings it back. An
erasure of the step's subject must reach those copies, and the revived step must not
come back as the erased subject's job:

* the erasure deleted the kept data and options but left ``sm``, which names the
  subject: the revived step came back marked with the erased subject (``sj``), outside
  the subject's index;
* the retention service's garbage collection dropped the subject-index entry of the
  cancelled step (its record is gone), so a later erasure found nothing: the kept data
  survived it, and the replay ran the subject's data again as a job the subject's index
  does not list (a completed step's result copy in ``dep:<id>`` escaped the same way).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from helpers import QueueFactory, wait_until
from kitium_queue import JobQueue, NonRetryableError
from kitium_queue.features.compliance import ComplianceManager
from kitium_queue.features.workflows import JobChainManager, WorkflowStep

pytestmark = pytest.mark.redis_only


@pytest.fixture
async def rq(redis_url: str, prefix: str) -> AsyncIterator[QueueFactory]:
    factory = QueueFactory(redis_url, prefix)
    yield factory
    await factory.aclose()


class Flow:
    """A workflow whose root fails until fixed, its second step carrying a subject."""

    def __init__(self, rq: QueueFactory) -> None:
        self.q: JobQueue = rq(
            "c", retry={"max_attempts": 1}, worker={"concurrency": 2, "scheduler": False}
        )
        # No retention service: the garbage collection runs when a test says so.
        self.comp = ComplianceManager(self.q, run_service=False)
        self.chains = JobChainManager(self.q)
        self.fixed = False
        self.seen: dict[str, Any] = {}
        self.q.process("w", self._body)

    async def _body(self, job: Any) -> Any:
        if job.data.get("bad") and not self.fixed:
            raise NonRetryableError("not now")
        self.seen[job.id] = job.data
        return job.data

    async def fail(self) -> dict[str, str]:
        made = await self.chains.execute_workflow(
            "wf",
            [
                WorkflowStep("a", "w", {"bad": 1}),
                WorkflowStep(
                    "b", "w", {"pii": "x"}, depends_on=["a"], options={"subject_id": "alice"}
                ),
            ],
        )
        await self.q.start()

        async def failed() -> bool:
            st = await self.chains.get_workflow_status("wf")
            return st is not None and st.state == "failed" and st.unfinished == 0

        await wait_until(failed, 10)
        return made

    async def replay(self, made: dict[str, str]) -> dict[bytes, bytes]:
        """Replay the failed root; the revived step's record once it ran."""
        self.fixed = True
        assert await self.q.replay_dlq() == 1
        client = await self.q.client()

        async def ended() -> bool:
            st = await client.hget(self.q.keys.job(made["b"]), "st")
            return st in (b"completed", b"failed", b"dlq")

        await wait_until(ended, 10)
        got: dict[bytes, bytes] = await client.hgetall(self.q.keys.job(made["b"]))
        return got

    async def replay_erased(self, made: dict[str, str]) -> None:
        """Replay the failed root of a workflow whose step ``b`` was erased: the root
        completes, nothing comes back, the workflow stays failed at ``b``."""
        self.fixed = True
        assert await self.q.replay_dlq() == 1

        async def refused() -> bool:
            st = await self.chains.get_workflow_status("wf")
            return st is not None and st.steps["a"].state == "completed" and st.failed_step == "b"

        await wait_until(refused, 10)
        client = await self.q.client()
        assert not await client.exists(self.q.keys.job(made["b"]))


async def test_an_erasure_leaves_no_marker_of_a_cancelled_step(rq: QueueFactory) -> None:
    f = Flow(rq)
    made = await f.fail()
    client = await f.q.client()
    dep = f.q.keys.extra("dep:" + made["b"])
    assert b"alice" in (await client.hget(dep, "sm") or b"")
    report = await f.comp.erase_subject("alice")
    assert report.jobs == 1
    # Nothing of the step's data, options or markers (its subject) is left.
    left = await client.hmget(dep, "sd", "so", "sm")
    assert left == [None, None, None], left
    # Not revived without its erased definition: it never becomes the subject's job again.
    await f.replay_erased(made)
    assert made["b"] not in f.seen


async def test_a_cancelled_steps_copies_keep_its_subject_index_entry(rq: QueueFactory) -> None:
    f = Flow(rq)
    made = await f.fail()
    client = await f.q.client()
    # The step's record is gone, its copies are kept: its index entry stays.
    assert await f.comp.collect_garbage() == 0
    assert await client.hexists(f.q.keys.extra("subj:alice"), made["b"])
    report = await f.comp.erase_subject("alice")
    assert report.jobs == 1
    dep = f.q.keys.extra("dep:" + made["b"])
    assert await client.hmget(dep, "sd", "so", "sm") == [None, None, None]
    await f.replay_erased(made)
    # The erased data never ran again.
    assert made["b"] not in f.seen, f.seen


async def test_a_revived_step_is_found_by_its_subjects_erasure(rq: QueueFactory) -> None:
    f = Flow(rq)
    made = await f.fail()
    assert await f.comp.collect_garbage() == 0
    rec = await f.replay(made)
    assert rec[b"sj"] == b"alice" and f.seen[made["b"]] == {"pii": "x"}
    assert made["b"] in await f.comp.subject_jobs("alice")
    report = await f.comp.erase_subject("alice")
    assert report.jobs == 1
    client = await f.q.client()
    assert not await client.exists(f.q.keys.job(made["b"]))
    assert await client.hmget(f.q.keys.extra("dep:" + made["b"]), "r", "sd", "sm") == [
        None,
        None,
        None,
    ]


async def test_a_completed_steps_result_copy_keeps_its_index_entry(rq: QueueFactory) -> None:
    f = Flow(rq)
    f.fixed = True
    made = await f.chains.execute_workflow(
        "wf",
        [
            WorkflowStep("a", "w", {"pii": "y"}, options={"subject_id": "alice"}),
            WorkflowStep("b", "w", {}, depends_on=["a"]),
        ],
    )
    await f.q.start()

    async def done() -> bool:
        st = await f.chains.get_workflow_status("wf")
        return st is not None and st.state == "completed"

    await wait_until(done, 10)
    client = await f.q.client()
    dep = f.q.keys.extra("dep:" + made["a"])
    assert await client.hget(dep, "r") is not None
    # The job goes the ordinary way; its workflow keeps a copy of its result.
    assert await f.q.remove_job(made["a"])
    assert await f.comp.collect_garbage() == 0
    report = await f.comp.erase_subject("alice")
    assert report.jobs == 1
    assert await client.hget(dep, "r") is None
