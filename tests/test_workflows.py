"""Workflows and job dependencies (``kitium_queue.features.workflows``) through the API.

Validation before any write, release of dependents, data passing and transformers,
each failure policy, cancel, a dead-lettered step replayed, plain ``depends_on`` and
``wait_for_dependencies``, events, status and listing. The multi-process SIGKILL DAG and
the 10,000-wide fan-out / fan-in are in ``tests/test_workflows_procs.py``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from helpers import QueueFactory, wait_until
from kitium_queue import ConfigurationError, JobQueue, JobRefusedError, JobStatus
from kitium_queue.errors import JobStateError
from kitium_queue.features.workflows import JobChainManager, WorkflowStep
from kitium_queue.hooks import FeatureEvent, Subscriber


def double(data: Any, parents: Any) -> Any:
    """An importable transformer: the sum of the parents' results, doubled."""
    return {"total": 2 * sum(p.result["n"] for p in parents.values())}


class Events(Subscriber):
    def __init__(self) -> None:
        self.seen: list[FeatureEvent] = []

    def feature_event(self, event: FeatureEvent) -> None:
        self.seen.append(event)


def wf_queue(make_queue: QueueFactory, **kw: Any) -> tuple[JobQueue, JobChainManager]:
    q = make_queue("wf", worker={"concurrency": 8}, **kw)
    return q, JobChainManager(q)


async def done(
    chains: JobChainManager, wid: str, state: str = "completed", timeout: float = 15
) -> Any:
    async def check() -> bool:
        st = await chains.get_workflow_status(wid)
        return st is not None and st.state == state and st.unfinished == 0

    await wait_until(check, timeout)
    return await chains.get_workflow_status(wid)


async def test_diamond_runs_in_order_and_passes_data(make_queue: QueueFactory) -> None:
    q, chains = wf_queue(make_queue)
    order: list[str] = []
    seen: dict[str, Any] = {}

    @q.process("step")
    async def step(job: Any) -> Any:
        order.append(job.data["name"])
        parents = await chains.parent_results(job)
        seen[job.data["name"]] = {k: v.result for k, v in parents.items()}
        return {"n": len(job.data["name"])}

    ids = await chains.execute_workflow(
        "order-1",
        [
            WorkflowStep("a", "step", {"name": "a"}),
            {"name": "b", "job_name": "step", "data": {"name": "bb"}, "depends_on": ["a"]},
            WorkflowStep("c", "step", {"name": "ccc"}, depends_on=["a"]),
            WorkflowStep("d", "step", {"name": "d"}, depends_on=["b", "c"]),
        ],
    )
    assert ids == {"a": "order-1:a", "b": "order-1:b", "c": "order-1:c", "d": "order-1:d"}
    assert (await q.get_job_status("order-1:d")).status is JobStatus.PENDING  # type: ignore[union-attr]
    assert (await q.get_job_status("order-1:a")).status is JobStatus.WAITING  # type: ignore[union-attr]
    await q.start()
    st = await done(chains, "order-1")
    assert order[0] == "a" and order[-1] == "d" and sorted(order[1:3]) == ["bb", "ccc"]
    assert seen["d"] == {"b": {"n": 2}, "c": {"n": 3}}
    assert seen["a"] == {}
    assert st.counts == {"completed": 4} and st.total == 4
    assert st.steps["d"].depends_on == ["b", "c"] and st.steps["d"].attempts == 1
    assert st.steps["d"].started_at is not None and st.finished_at is not None
    rows = await chains.list_workflows()
    assert [(r.workflow_id, r.state, r.total) for r in rows] == [("order-1", "completed", 4)]


async def test_transformers_registered_and_importable(make_queue: QueueFactory) -> None:
    q, chains = wf_queue(make_queue)
    got: dict[str, Any] = {}
    chains.register_transformer("names", lambda data, ps: {**data, "from": sorted(ps)})

    @q.process("num")
    async def num(job: Any) -> Any:
        return {"n": job.data["n"]}

    @q.process("sink")
    async def sink(job: Any) -> None:
        got[job.id] = job.data

    await chains.execute_workflow(
        "t",
        [
            WorkflowStep("x", "num", {"n": 2}),
            WorkflowStep("y", "num", {"n": 5}),
            WorkflowStep("s1", "sink", {"k": 1}, depends_on=["x", "y"], data_transformer="names"),
            WorkflowStep(
                "s2", "sink", None, depends_on=["x", "y"], data_transformer="test_workflows:double"
            ),
        ],
    )
    await q.start()
    await done(chains, "t")
    assert got == {"t:s1": {"k": 1, "from": ["x", "y"]}, "t:s2": {"total": 14}}


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        (
            [
                {"name": "a", "job_name": "j", "depends_on": ["b"]},
                {"name": "b", "job_name": "j", "depends_on": ["a"]},
            ],
            "step 'a' is part of a dependency cycle",
        ),
        (
            [{"name": "a", "job_name": "j"}, {"name": "a", "job_name": "j"}],
            "step 'a' is declared twice",
        ),
        ([{"name": "a", "job_name": "j", "depends_on": ["zz"]}], "step 'a' depends on 'zz'"),
        ([{"name": "a", "job_name": "j", "depends_on": ["a"]}], "step 'a' depends on itself"),
        ([{"name": "a", "job_name": "j", "on_failure": "explode"}], "step 'a': on_failure"),
        ([{"name": "a", "job_name": "j", "options": {"job_id": "x"}}], "step 'a': options job_id"),
        (
            [{"name": "a", "job_name": "j", "data_transformer": "nowhere"}],
            "step 'a': data_transformer",
        ),
        ([{"name": "a", "job_name": "j", "bogus": 1}], "unknown key(s) bogus"),
        ([], "at least one step"),
    ],
)
async def test_bad_workflows_write_nothing(
    make_queue: QueueFactory, steps: Any, message: str
) -> None:
    q, chains = wf_queue(make_queue)
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        await chains.execute_workflow("bad", steps)
    assert await chains.get_workflow_status("bad") is None
    assert (await q.get_stats()).waiting == 0


async def test_unknown_processor_and_taken_ids(make_queue: QueueFactory) -> None:
    q, chains = wf_queue(make_queue)

    @q.process("known")
    async def known(job: Any) -> None:
        return None

    with pytest.raises(ConfigurationError, match="step 'b': no processor for job name 'nope'"):
        await chains.execute_workflow(
            "w", [WorkflowStep("a", "known"), WorkflowStep("b", "nope", depends_on=["a"])]
        )
    await chains.execute_workflow("w", [WorkflowStep("a", "known")])
    with pytest.raises(JobStateError, match="workflow 'w' exists"):
        await chains.execute_workflow("w", [WorkflowStep("a", "known")])
    await q.add_job("known", job_id="v:a")
    with pytest.raises(JobStateError, match="job id 'v:a' is taken"):
        await chains.execute_workflow("v", [WorkflowStep("a", "known")])
    assert await chains.get_workflow_status("v") is None


async def flaky_queue(
    make_queue: QueueFactory, **kw: Any
) -> tuple[JobQueue, JobChainManager, list[str]]:
    q, chains = wf_queue(make_queue, **kw)
    ran: list[str] = []

    @q.process("ok")
    async def ok(job: Any) -> Any:
        ran.append(job.id)
        return {"ok": job.id}

    @q.process("bad")
    async def bad(job: Any) -> None:
        ran.append(job.id)
        raise RuntimeError(f"boom in {job.id}")

    return q, chains, ran


def shape(policy: str) -> list[WorkflowStep]:
    # root -> bad -> child -> grandchild ; root -> side (independent) -> tail
    return [
        WorkflowStep("root", "ok"),
        WorkflowStep("bad", "bad", depends_on=["root"], on_failure=policy),
        WorkflowStep("child", "ok", depends_on=["bad"]),
        WorkflowStep("grand", "ok", depends_on=["child"]),
        WorkflowStep("side", "ok", depends_on=["root"]),
        WorkflowStep("tail", "ok", depends_on=["side", "grand"]),
    ]


async def test_fail_workflow_cancels_what_has_not_started(make_queue: QueueFactory) -> None:
    q, chains, ran = await flaky_queue(make_queue)
    ev = Events()
    q.subscribe(ev)
    await chains.execute_workflow("f", shape("fail_workflow"))
    await q.start()
    st = await done(chains, "f", "failed")
    assert st.failed_step == "bad"
    assert st.steps["bad"].state in ("dlq", "failed") and "boom" in (st.steps["bad"].error or "")
    for s in ("child", "grand", "tail"):
        assert st.steps[s].state == "cancelled", s
        assert await q.get_job_status(f"f:{s}") is None  # removed, not left pending
    assert "f:child" not in ran
    await wait_until(lambda: any(e.name == "workflow-failed" for e in ev.seen), 10)
    e = next(e for e in ev.seen if e.name == "workflow-failed")
    assert (e.subject, e.fields["step"], e.feature) == ("f", "bad", "workflows")


async def test_continue_runs_dependents_with_the_error(make_queue: QueueFactory) -> None:
    q, chains, _ran = await flaky_queue(make_queue)
    seen: dict[str, Any] = {}

    @q.process("peek")
    async def peek(job: Any) -> None:
        seen.update(await chains.parent_results(job))

    steps = shape("continue")
    steps[2] = WorkflowStep("child", "peek", depends_on=["bad"])
    await chains.execute_workflow("c", steps)
    await q.start()
    st = await done(chains, "c", "completed")
    assert seen["bad"].status == "failed" and "boom in c:bad" in (seen["bad"].error or "")
    assert st.steps["tail"].state == "completed" and st.counts.get("completed") == 5


async def test_skip_skips_dependents_and_goes_on(make_queue: QueueFactory) -> None:
    q, chains, ran = await flaky_queue(make_queue)
    await chains.execute_workflow("s", shape("skip"))
    await q.start()
    st = await done(chains, "s", "completed")
    assert [st.steps[s].state for s in ("child", "grand", "tail")] == ["skipped"] * 3
    assert st.steps["side"].state == "completed"
    assert not any(r in ran for r in ("s:child", "s:grand", "s:tail"))


async def test_retry_attempts_per_step(make_queue: QueueFactory) -> None:
    q, chains = wf_queue(make_queue)
    tries: list[int] = []

    @q.process("shaky")
    async def shaky(job: Any) -> str:
        tries.append(job.attempts)
        if job.attempts < 3:
            raise RuntimeError("not yet")
        return "ok"

    await chains.execute_workflow(
        "r",
        [
            WorkflowStep(
                "a", "shaky", retry_attempts=2, options={"backoff": {"type": "fixed", "delay": 10}}
            )
        ],
    )
    await q.start()
    st = await done(chains, "r")
    assert tries == [1, 2, 3] and st.steps["a"].attempts == 3


async def test_cancel_workflow(make_queue: QueueFactory) -> None:
    q, chains = wf_queue(make_queue)
    started: list[str] = []

    @q.process("slow")
    async def slow(job: Any) -> None:
        started.append(job.id)
        await asyncio.sleep(0.5)

    await chains.execute_workflow(
        "x",
        [
            WorkflowStep("a", "slow"),
            WorkflowStep("b", "slow", depends_on=["a"]),
            WorkflowStep("c", "slow", depends_on=["b"]),
        ],
    )
    await q.start()
    await wait_until(lambda: started == ["x:a"], 10)
    assert await chains.cancel_workflow("x") == 2
    st = await done(chains, "x", "cancelled")
    assert st.steps["b"].state == st.steps["c"].state == "cancelled"
    assert started == ["x:a"]
    assert await chains.cancel_workflow("x") == 0
    with pytest.raises(Exception, match="not found"):
        await chains.cancel_workflow("nope")


async def test_dead_lettered_step_replayed_continues(make_queue: QueueFactory) -> None:
    q, chains = wf_queue(make_queue)
    fail = {"on": True}
    ran: list[str] = []

    @q.process("gate")
    async def gate(job: Any) -> str:
        if fail["on"]:
            raise RuntimeError("gate closed")
        return "open"

    @q.process("after")
    async def after(job: Any) -> Any:
        ran.append(job.id)
        return {k: v.result for k, v in (await chains.parent_results(job)).items()}

    await chains.execute_workflow(
        "d",
        [
            WorkflowStep("g", "gate"),
            WorkflowStep("x", "after", depends_on=["g"]),
            WorkflowStep("y", "after", depends_on=["x"]),
        ],
    )
    await q.start()
    st = await done(chains, "d", "failed")
    assert st.steps["g"].state == "dlq" and st.steps["x"].state == "cancelled"
    fail["on"] = False
    assert await q.replay_dlq() == 1
    st = await done(chains, "d", "completed")
    assert ran == ["d:x", "d:y"]
    assert st.counts == {"completed": 3}
    info = await q.get_job_status("d:y")
    assert info is not None and info.result == {"x": {"g": "open"}}


async def test_plain_depends_on_and_wait_for_dependencies(make_queue: QueueFactory) -> None:
    q, chains = wf_queue(make_queue)
    log: list[str] = []

    @q.process("j")
    async def j(job: Any) -> str:
        log.append(job.id)
        return job.id

    a = await q.add_job("j", job_id="A")
    b = await q.add_job("j", job_id="B", depends_on=[a])
    c = await q.add_job("j", job_id="C")
    assert await chains.wait_for_dependencies(c, [b]) == 1
    assert (await q.get_job_status(c)).status is JobStatus.PENDING  # type: ignore[union-attr]
    with pytest.raises(JobRefusedError, match="job nope, which does not exist"):
        await q.add_job("j", depends_on=["nope"])
    with pytest.raises(JobStateError, match="has dependencies already"):
        await chains.wait_for_dependencies(c, [a])
    await q.start()
    await wait_until(lambda: len(log) == 3, 10)
    assert log == ["A", "B", "C"]
    assert (await chains.parent_results("C"))["B"].result == "B"
    # A completed parent counts as done at once.
    d = await q.add_job("j", depends_on=["C"])
    await wait_until(lambda: d in log, 10)
    with pytest.raises(ConfigurationError, match="depends_on must be a list"):
        await q.add_job("j", depends_on="A")


async def test_completed_event_and_timing(make_queue: QueueFactory) -> None:
    q, chains = wf_queue(make_queue)
    ev = Events()
    q.subscribe(ev)

    @q.process("n")
    async def n(job: Any) -> None:
        return None

    await chains.execute_workflow(
        "e", [WorkflowStep(f"s{i}", "n", depends_on=[f"s{i - 1}"] if i else []) for i in range(20)]
    )
    t0 = time.monotonic()
    await q.start()
    await done(chains, "e")
    assert time.monotonic() - t0 < 30
    await wait_until(lambda: any(e.name == "workflow-completed" for e in ev.seen), 10)
    evs = [e async for e in _stream(q)]
    assert "workflow-completed" in evs


async def _stream(q: JobQueue) -> Any:
    client = await q.client()
    for _id, fields in await client.xrange(q.keys.events):
        yield (fields.get(b"event") or fields.get(b"e") or b"").decode()


@pytest.mark.redis_only
async def test_encrypted_steps(make_queue: QueueFactory) -> None:
    from kitium_queue.features.encryption import EncryptionManager, KeyConfig, generate_key

    q, chains = wf_queue(make_queue)
    EncryptionManager(q, keys=[KeyConfig("k1", generate_key())])
    seen: dict[str, Any] = {}

    @q.process("s")
    async def s(job: Any) -> Any:
        seen[job.id] = (job.data, await chains.parent_results(job))
        return {"secret": "R-" + job.id}

    await chains.execute_workflow(
        "enc",
        [
            WorkflowStep("a", "s", {"card": "4111-MARK"}, options={"encrypted": True}),
            WorkflowStep("b", "s", {"x": 1}, depends_on=["a"], options={"encrypted": True}),
        ],
    )
    client = await q.client()
    assert b"4111-MARK" not in await client.hget(q.keys.job("enc:a"), "d")
    await q.start()
    await done(chains, "enc")
    assert seen["enc:a"][0] == {"card": "4111-MARK"} and seen["enc:b"][0] == {"x": 1}
    # The parent's result is passed on as stored: sealed (an envelope), never in clear.
    sealed = seen["enc:b"][1]["a"].result
    assert isinstance(sealed, dict) and sealed.get("kid") == "k1"
    assert b"R-enc:a" not in await client.hget(q.keys.extra("dep:enc:a"), "r")


async def test_removing_a_pending_step_applies_its_policy(make_queue: QueueFactory) -> None:
    q, chains = wf_queue(make_queue)

    @q.process("n")
    async def n(job: Any) -> None:
        return None

    await chains.execute_workflow(
        "rm",
        [
            WorkflowStep("a", "n"),
            WorkflowStep("b", "n", depends_on=["a"], on_failure="skip"),
            WorkflowStep("c", "n", depends_on=["b"]),
            WorkflowStep("d", "n", depends_on=["a"]),
        ],
    )
    assert await q.remove_job("rm:b")
    st = await chains.get_workflow_status("rm")
    assert st is not None and st.steps["b"].state == "failed"
    assert st.steps["c"].state == "skipped" and await q.get_job_status("rm:c") is None
    await q.start()
    st = await done(chains, "rm")
    assert st.counts == {"completed": 2, "failed": 1, "skipped": 1}


async def test_delayed_job_with_dependencies_waits_for_both(make_queue: QueueFactory) -> None:
    q, _chains = wf_queue(make_queue)
    ran: list[tuple[str, float]] = []
    gate = asyncio.Event()

    @q.process("n")
    async def n(job: Any) -> None:
        if job.id == "P":
            await gate.wait()
        ran.append((job.id, time.monotonic()))

    await q.add_job("n", job_id="P")
    await q.add_job("n", job_id="K", depends_on=["P"], delay=100)
    t0 = time.monotonic()
    await q.start()
    await asyncio.sleep(0.4)  # K is due, but its parent is still running
    assert ran == []
    gate.set()
    await wait_until(lambda: len(ran) == 2, 10)
    assert [r[0] for r in ran] == ["P", "K"] and ran[1][1] - t0 >= 0.1
