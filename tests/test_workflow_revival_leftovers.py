"""A workflow's step revived by a DLQ replay, and the features that follow a job coming
back. The step a failed workflow cancelled is removed (every feature's ``release``
fragment sees it go) and written again when the replayed step completes (``revive``,
``features/workflows/prelude.lua``); it then passes the ``requeue`` slot like any
finished job put back in wait (``requeued``, ``lua/lib_slots.lua``):

* multi-region: the revived step is announced to the secondaries (an outbox ``req``),
  and a secondary that removed its copy with the cancel adds it again (before, the
  secondary never learnt of it: its tombstone skipped every later entry, so the step
  that ran and completed at the primary was missing there);
* idempotency: a step whose key was held ``until_finished`` takes it again when it is
  revived, and so does a dead-lettered job put back by ``replay_dlq`` (before, the key
  freed by the cancel or the final failure stayed free: a duplicate added while the
  revived step waited or ran was added and ran as a second job);
* compliance: a cancelled step whose kept data an erasure deleted is not revived with
  empty data: nothing of the workflow comes back, it stays failed at that step, the
  step says why and ``workflow-failed`` is raised again (before, it came back and ran
  with empty data).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from helpers import QueueFactory, wait_until
from kitium_queue import IdempotencyManager, JobQueue, NonRetryableError
from kitium_queue.features.compliance import ComplianceManager
from kitium_queue.features.regions import GlobalQueueManager
from kitium_queue.features.workflows import JobChainManager, WorkflowStep

FAST = {"concurrency": 2, "scheduler": False}


class Fails:
    """A processor whose jobs with ``bad`` in their data fail for good until fixed."""

    def __init__(self) -> None:
        self.fixed = False
        self.ran: list[tuple[str, Any]] = []

    async def __call__(self, job: Any) -> Any:
        if isinstance(job.data, dict) and job.data.get("bad") and not self.fixed:
            raise NonRetryableError("not now")
        self.ran.append((str(job.id), job.data))
        return job.data


async def failed_workflow(chains: JobChainManager, wid: str = "wf") -> bool:
    st = await chains.get_workflow_status(wid)
    return st is not None and st.state == "failed" and st.unfinished == 0


class Gated:
    """Fails for good until fixed; then each run waits for ``gate``."""

    def __init__(self) -> None:
        self.fixed = False
        self.gate, self.started = asyncio.Event(), asyncio.Event()
        self.runs: list[Any] = []

    async def __call__(self, job: Any) -> Any:
        if not self.fixed:
            raise NonRetryableError("not now")
        self.runs.append(job.data)
        self.started.set()
        await self.gate.wait()
        return "done"


# ------------------------------------------------------------------------- regions
NAMES = ("us-east-1", "eu-west-1")


@pytest.fixture
async def two_regions(backend_url: str, prefix: str) -> AsyncIterator[GlobalQueueManager]:
    if backend_url.startswith("memory://"):
        urls = [f"memory://{uuid.uuid4().hex}" for _ in NAMES]
    else:
        parts = urlsplit(backend_url)
        urls = [urlunsplit(parts._replace(path=f"/{db}")) for db in (1, 2)]
    m = GlobalQueueManager()
    await m.initialize(
        {
            "name": "orders",
            "regions": [
                {"region": NAMES[0], "redis": urls[0], "is_primary": True},
                {"region": NAMES[1], "redis": urls[1], "priority": 1},
            ],
            "replication": {"enabled": True},
            "failover": {"enabled": True, "timeout_ms": 2000},
            "queue_options": {"prefix": prefix, "retry": {"max_attempts": 1}},
        }
    )
    yield m
    await m.close()


async def copy_state(m: GlobalQueueManager, region: str, job_id: str) -> str | None:
    info = await m.region(region).lane.get_job_status(job_id)
    return None if info is None else info.status.value


async def test_a_revived_step_reaches_the_other_regions(
    two_regions: GlobalQueueManager,
) -> None:
    m = two_regions
    root = Fails()
    m.process("w", root)
    step = Gated()
    step.fixed = True
    m.process("slow", step)
    # The workflow lives on the primary's copy of the global queue.
    chains = JobChainManager(m.region(NAMES[0]).lane)
    made = await chains.execute_workflow(
        "wf",
        [WorkflowStep("a", "w", {"bad": 1}), WorkflowStep("b", "slow", {"n": 2}, depends_on=["a"])],
    )
    await m.start(concurrency=2)
    await wait_until(lambda: failed_workflow(chains), 10)
    # The cancel removed the step's copy everywhere.
    await wait_until(lambda: _state_is(m, NAMES[1], made["a"], "dlq"), 10)
    await wait_until(lambda: _removed(m, NAMES[1], made["b"]), 10)
    root.fixed = True
    assert await m.replay_dlq() == 1
    try:
        # Revived, the step runs at the primary: the secondary learns of it meanwhile.
        await asyncio.wait_for(step.started.wait(), 10)
        await wait_until(lambda: _state_is(m, NAMES[1], made["b"], "waiting"), 10)
    finally:
        step.gate.set()

    async def completed() -> bool:
        st = await chains.get_workflow_status("wf")
        return st is not None and st.state == "completed"

    await wait_until(completed, 10)
    assert step.runs == [{"n": 2}]
    # ... and of its outcome.
    await wait_until(lambda: _state_is(m, NAMES[1], made["b"], "completed"), 10)


async def _removed(m: GlobalQueueManager, region: str, job_id: str) -> bool:
    return await copy_state(m, region, job_id) is None


async def _state_is(m: GlobalQueueManager, region: str, job_id: str, want: str) -> bool:
    return await copy_state(m, region, job_id) == want


# ------------------------------------------------------------------------- idempotency
UNTIL_FINISHED = {"idempotency_key": "order-7", "idempotency_window": "until_finished"}


async def test_a_revived_step_takes_its_until_finished_key_again(
    make_queue: QueueFactory,
) -> None:
    q: JobQueue = make_queue("idem", retry={"max_attempts": 1}, worker=FAST)
    IdempotencyManager(q)
    chains = JobChainManager(q)
    root = Fails()
    q.process("w", root)
    step = Gated()
    step.fixed = True
    q.process("slow", step)
    made = await chains.execute_workflow("wf", [WorkflowStep("a", "w", {"bad": 1})])
    # A step added to the running workflow, its key held until it finishes.
    b = await q.add_job(
        "slow",
        {"n": 2},
        workflow_id="wf",
        workflow_step="b",
        depends_on=[made["a"]],
        **UNTIL_FINISHED,
    )
    # While the step waits for its parent, its key suppresses a duplicate.
    assert await q.add_job("slow", {"dup": 0}, **UNTIL_FINISHED) == b
    await q.start()
    await wait_until(lambda: failed_workflow(chains), 10)
    client = await q.client()
    ikey = q.keys.extra("idem:order-7")
    # Cancelled with its workflow: the key was freed with it.
    assert await client.get(ikey) is None
    root.fixed = True
    # The root completes, the step comes back and runs: unfinished, it holds its key.
    await _replayed_runs_holding_its_key(q, step, ikey, b)

    async def completed() -> bool:
        st = await chains.get_workflow_status("wf")
        return st is not None and st.state == "completed"

    await wait_until(completed, 10)
    # The duplicates never ran; the finished step freed its key again.
    assert step.runs == [{"n": 2}]
    await wait_until(lambda: _gone(q, ikey), 10)


async def _replayed_runs_holding_its_key(q: JobQueue, gated: Gated, ikey: str, holder: str) -> None:
    """Replay the DLQ; once ``gated``'s job (``holder``) runs again, its until_finished
    key ``ikey`` is its own and a duplicate add returns it. Then the job may end."""
    client = await q.client()
    assert await q.replay_dlq() == 1
    try:
        await asyncio.wait_for(gated.started.wait(), 10)
        assert await client.get(ikey) == holder.encode()
        assert await q.add_job("slow", {"dup": 1}, **UNTIL_FINISHED) == holder
    finally:
        gated.gate.set()


async def _gone(q: JobQueue, key: str) -> bool:
    client = await q.client()
    return not await client.exists(key)


async def test_a_replayed_job_takes_its_until_finished_key_again(
    make_queue: QueueFactory,
) -> None:
    q: JobQueue = make_queue("idem2", retry={"max_attempts": 1}, worker=FAST)
    IdempotencyManager(q)
    job = Gated()
    q.process("slow", job)
    jid = await q.add_job("slow", {"n": 1}, **UNTIL_FINISHED)
    await q.start()
    await wait_until(lambda: _in_dlq(q, jid), 10)
    ikey = q.keys.extra("idem:order-7")
    client = await q.client()
    assert await client.get(ikey) is None
    job.fixed = True
    # Back in wait, then running again: the key is its own and suppresses a duplicate.
    await _replayed_runs_holding_its_key(q, job, ikey, jid)
    await wait_until(lambda: _gone(q, ikey), 10)
    assert job.runs == [{"n": 1}]


async def _in_dlq(q: JobQueue, jid: str) -> bool:
    info = await q.get_job_status(jid)
    return info is not None and info.status.value == "dlq"


# ------------------------------------------------------------------------- compliance
async def test_an_erased_step_is_not_revived_with_empty_data(
    make_queue: QueueFactory,
) -> None:
    q: JobQueue = make_queue("erase", retry={"max_attempts": 1}, worker=FAST)
    comp = ComplianceManager(q, run_service=False)
    chains = JobChainManager(q)
    body = Fails()
    q.process("w", body)
    made = await chains.execute_workflow(
        "wf",
        [
            WorkflowStep("a", "w", {"bad": 1}),
            WorkflowStep("b", "w", {"pii": "x"}, depends_on=["a"], options={"subject_id": "al"}),
            WorkflowStep("c", "w", {"n": 3}, depends_on=["b"]),
            WorkflowStep("d", "w", {"n": 4}, depends_on=["a"]),
        ],
    )
    await q.start()
    await wait_until(lambda: failed_workflow(chains), 10)
    report = await comp.erase_subject("al")
    assert report.jobs == 1
    body.fixed = True
    assert await q.replay_dlq() == 1

    async def refused() -> Any:
        st = await chains.get_workflow_status("wf")
        ok = st is not None and st.steps["a"].state == "completed" and st.failed_step == "b"
        return st if ok else None

    st = await wait_until(refused, 10)
    # Nothing came back: the workflow stays failed, at the erased step, which says why.
    assert st.state == "failed"
    assert st.steps["b"].state == "cancelled"
    assert "erased" in (st.steps["b"].error or "")
    assert {st.steps[s].state for s in "cd"} == {"cancelled"}
    client = await q.client()
    for s in "bcd":
        assert not await client.exists(q.keys.job(made[s]))
    # workflow-failed is raised again, naming the erased step.
    log = await client.xrange(q.keys.extra("wf-log"))
    fails = [f[b"s"] for _, f in log if f[b"e"] == b"workflow-failed"]
    assert fails == [b"a", b"b"], log
    # A second look later: nothing ran but the root.
    await wait_until(lambda: len(body.ran) >= 1, 5)
    assert [jid for jid, _ in body.ran] == [made["a"]]
