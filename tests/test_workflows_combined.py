"""Workflows with the rest of the queue: FIFO groups, steps added with ``add_job``, and
a ``PartitionedQueue`` (every step of a workflow on the partition of its id).

The Redis Cluster run is in ``tests/test_workflows_cluster.py``, webhooks of workflow
events in ``tests/test_workflows_webhooks.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from _fuzz_strategies import ids, nasty_text, unwrap
from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import (
    ConfigurationError,
    JobQueue,
    JobRefusedError,
    JobStatus,
    KitiumQueueError,
    PartitionedQueue,
)
from kitium_queue.features.groups import FIFOQueueManager
from kitium_queue.features.workflows import JobChainManager, WorkflowStep

G1 = {"message_group_id": "g1"}


async def finished(chains: JobChainManager, wid: str, state: str, timeout: float = 15) -> Any:
    async def check() -> Any:
        st = await chains.get_workflow_status(wid)
        return st if st is not None and st.state == state and st.unfinished == 0 else None

    return await wait_until(check, timeout, message=f"workflow {wid} to be {state}")


# ================================================================ FIFO groups


@pytest.mark.parametrize("order", ["groups-first", "workflows-first"])
async def test_cancelled_and_skipped_steps_give_their_group_place_back(
    make_queue: QueueFactory,
    order: str,
) -> None:
    q = make_queue("wfg", worker={"concurrency": 4})
    # The two features' fragments run in registration order: both orders must hold.
    if order == "groups-first":
        fifo = FIFOQueueManager(q)
        chains = JobChainManager(q)
    else:
        chains = JobChainManager(q)
        fifo = FIFOQueueManager(q)
    gate = asyncio.Event()
    ran: list[str] = []

    @q.process("ok")
    async def ok(job: Any) -> None:
        ran.append(job.id)

    @q.process("bad")
    async def bad(job: Any) -> None:
        raise RuntimeError("no")

    @q.process("slow")
    async def slow(job: Any) -> None:
        ran.append(job.id)
        await gate.wait()

    # f: its root fails the workflow, b and c (group g1) are cancelled; s: its root
    # fails with skip, b (g1) is skipped; x: cancelled with cancel_workflow while its
    # root runs. A step waiting for its parent holds no turn of its group (it is not
    # ready, as a delayed job): the removal gives its place back, and no turn is left.
    await chains.execute_workflow(
        "f",
        [
            WorkflowStep("a", "bad"),
            WorkflowStep("b", "ok", depends_on=["a"], options=G1),
            WorkflowStep("c", "ok", depends_on=["b"], options=G1),
        ],
    )
    await chains.execute_workflow(
        "s",
        [
            WorkflowStep("a", "bad", on_failure="skip"),
            WorkflowStep("b", "ok", depends_on=["a"], options=G1),
        ],
    )
    await chains.execute_workflow(
        "x",
        [
            WorkflowStep("a", "slow"),
            WorkflowStep("b", "ok", depends_on=["a"], options={"message_group_id": "g2"}),
        ],
    )
    before = await fifo.get_group_stats("g1")
    assert before.size == 3 and before.turns == []
    assert (await fifo.get_group_stats("g2")).size == 1
    await q.start()
    st = await finished(chains, "f", "failed")
    assert st.steps["b"].state == st.steps["c"].state == "cancelled"
    st = await finished(chains, "s", "completed")
    assert st.steps["b"].state == "skipped"
    await wait_until(lambda: "x:a" in ran, 5)
    assert await chains.cancel_workflow("x") == 1
    gate.set()
    await finished(chains, "x", "cancelled")
    for g in ("g1", "g2"):
        stats = await fifo.get_group_stats(g)
        assert (stats.size, stats.turns, stats.waiting) == (0, [], 0), (g, stats)
    # The groups are free: their next jobs run at once.
    jobs = [await q.add_job("ok", message_group_id=g) for g in ("g1", "g2")]
    for jid in jobs:
        await wait_for_status(q, jid, JobStatus.COMPLETED, timeout=10)
    assert not any(r.startswith(("f:b", "f:c", "s:b", "x:b")) for r in ran)


# ================================================================ add_job(workflow_id=...)


async def test_add_job_with_workflow_id_joins_a_running_workflow(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("wfj", worker={"concurrency": 4})
    chains = JobChainManager(q)
    gate = asyncio.Event()
    order: list[str] = []

    @q.process("n")
    async def n(job: Any) -> Any:
        if job.id == "w:a":
            await gate.wait()
        order.append(job.id)
        return {"id": job.id}

    await chains.execute_workflow(
        "w", [WorkflowStep("a", "n"), WorkflowStep("b", "n", depends_on=["a"])]
    )
    extra = await q.add_job(
        "n", {}, job_id="extra-1", workflow_id="w", workflow_step="audit", depends_on=["w:b"]
    )
    plain = await q.add_job("n", {}, job_id="extra-2", workflow_id="w")
    st = await chains.get_workflow_status("w")
    assert st is not None and (st.total, st.unfinished) == (4, 4)
    assert st.steps["audit"].depends_on == ["b"] and st.steps["audit"].state == "pending"
    assert st.steps["extra-2"].job_id == plain
    # Refused, nothing written: an unknown workflow, a step name taken, a finished one.
    with pytest.raises(JobRefusedError, match="workflow 'nope' is not running"):
        await q.add_job("n", {}, workflow_id="nope")
    with pytest.raises(JobRefusedError, match="workflow 'w' has a step named 'audit'"):
        await q.add_job("n", {}, workflow_id="w", workflow_step="audit")
    await q.start()
    # Waited for, not slept on: a loaded machine may start it later than any fixed sleep.
    await wait_for_status(q, plain, JobStatus.COMPLETED, timeout=10)
    # The job that joined without parents ran; the workflow waits for all four.
    st = await chains.get_workflow_status("w")
    assert st is not None and st.state == "running" and st.unfinished == 3
    gate.set()
    st = await finished(chains, "w", "completed")
    assert st.counts == {"completed": 4}
    assert order.index("w:b") < order.index(extra)
    assert (await chains.parent_results(extra))["b"].result == {"id": "w:b"}
    with pytest.raises(JobRefusedError, match=r"workflow 'w' is not running .*completed"):
        await q.add_job("n", {}, workflow_id="w")


async def test_a_step_added_with_add_job_fails_its_workflow(make_queue: QueueFactory) -> None:
    q = make_queue("wff", worker={"concurrency": 2})
    chains = JobChainManager(q)
    gate = asyncio.Event()

    @q.process("slow")
    async def slow(job: Any) -> None:
        await gate.wait()

    @q.process("bad")
    async def bad(job: Any) -> None:
        raise RuntimeError("joined and failed")

    await chains.execute_workflow(
        "w", [WorkflowStep("a", "slow"), WorkflowStep("b", "slow", depends_on=["a"])]
    )
    await q.add_job("bad", {}, workflow_id="w", workflow_step="late")
    await q.start()
    await wait_until(lambda: _state(chains, "w", "failed"), 10)
    gate.set()
    st = await finished(chains, "w", "failed")
    assert st.failed_step == "late"
    assert st.steps["b"].state == "cancelled" and st.steps["a"].state == "completed"


async def _state(chains: JobChainManager, wid: str, state: str) -> bool:
    st = await chains.get_workflow_status(wid)
    return st is not None and st.state == state


# ================================================================ partitioned queues


def partitioned(backend_url: str, prefix: str, n: int = 4) -> PartitionedQueue:
    return PartitionedQueue(
        "porders", partitions=n, redis=backend_url, prefix=prefix, worker={"concurrency": 8}
    )


async def test_workflows_on_a_partitioned_queue_stay_on_one_partition(
    backend_url: str,
    prefix: str,
) -> None:
    pq = partitioned(backend_url, prefix)
    chains = JobChainManager(pq)
    where: dict[str, str] = {}
    seen: dict[str, Any] = {}

    @pq.process("step")
    async def step(job: Any) -> Any:
        full = pq.public_id(job)
        where[full] = job.queue_name
        seen[full] = {k: v.result for k, v in (await chains.parent_results(job)).items()}
        return len(job.data["name"])

    wids = [f"order-{i}" for i in range(8)]
    all_ids: dict[str, dict[str, str]] = {}
    for wid in wids:
        all_ids[wid] = await chains.execute_workflow(
            wid,
            [
                WorkflowStep("a", "step", {"name": "a"}),
                WorkflowStep("b", "step", {"name": "bb"}, depends_on=["a"]),
                WorkflowStep("c", "step", {"name": "ccc"}, depends_on=["a"]),
                WorkflowStep("d", "step", {"name": "d"}, depends_on=["b", "c"]),
            ],
        )
    # Ids are full ids of the partitioned queue, on the partition of the workflow id.
    for wid, got in all_ids.items():
        p = pq.partition_of(wid)
        assert got == {s: f"{p}:{wid}:{s}" for s in "abcd"}
        assert chains.queue_of(wid) is pq.queues[p]
    assert len({pq.partition_of(w) for w in wids}) > 1  # spread over partitions
    # Steps added to a workflow with add_job, and jobs depending on its steps, follow it.
    wid = wids[0]
    joined = await pq.add_job(
        "step",
        {"name": "eeeee"},
        workflow_id=wid,
        workflow_step="e",
        depends_on=[all_ids[wid]["d"]],
    )
    after = await pq.add_job("step", {"name": "ff"}, depends_on=[joined, all_ids[wid]["b"]])
    p = pq.partition_of(wid)
    assert joined.startswith(f"{p}:") and after.startswith(f"{p}:")
    info = await pq.get_job_status(after)
    assert info is not None and info.status is JobStatus.PENDING
    await pq.start()
    for w in wids:
        st = await finished(chains, w, "completed")
        assert st.counts == {"completed": 5 if w == wid else 4}
    await wait_for_status(pq, after, JobStatus.COMPLETED)  # type: ignore[arg-type]
    for w, got in all_ids.items():
        names = {where[i] for i in got.values()}
        assert names == {pq.queues[pq.partition_of(w)].name}, (w, names)
        assert seen[got["d"]] == {"b": 2, "c": 3}
    assert seen[joined] == {"d": 1} and seen[after] == {"e": 5, "b": 2}
    st = await chains.get_workflow_status(wid)
    assert st is not None and st.steps["e"].job_id == joined
    assert st.steps["e"].depends_on == ["d"]
    listed = await chains.list_workflows()
    assert sorted(r.workflow_id for r in listed) == sorted(wids)
    assert [r.workflow_id for r in await chains.list_workflows(limit=3, offset=2)] == [
        r.workflow_id for r in listed[2:5]
    ]
    await pq.close()


async def test_partitioned_dependencies_refused_across_partitions(
    backend_url: str,
    prefix: str,
) -> None:
    pq = partitioned(backend_url, prefix)
    chains = JobChainManager(pq)

    @pq.process("n")
    async def n(job: Any) -> None:
        return None

    a = await pq.add_job("n", partition_key="k-0")
    other = next(
        k for k in (f"k-{i}" for i in range(1, 50)) if pq.partition_of(k) != pq.partition_of("k-0")
    )
    b = await pq.add_job("n", partition_key=other)
    with pytest.raises(ConfigurationError, match=r"on partitions .* must share one partition"):
        await pq.add_job("n", depends_on=[a, b])
    with pytest.raises(ConfigurationError, match="is not a job id of partitioned queue"):
        await pq.add_job("n", depends_on=["a-bare-id"])
    wid = next(
        w for w in (f"w-{i}" for i in range(50)) if pq.partition_of(w) != pq.partition_of("k-0")
    )
    with pytest.raises(ConfigurationError, match=r"workflow_id .* partition"):
        await pq.add_job("n", workflow_id=wid, depends_on=[a])
    with pytest.raises(ConfigurationError, match=r"partition_key .* partition"):
        await pq.add_job("n", partition_key=other, depends_on=[a])
    # Dependencies on one partition: the job goes there, with the ids inside it.
    c = await pq.add_job("n", depends_on=[a])
    assert c.split(":", 1)[0] == a.split(":", 1)[0]
    with pytest.raises(ConfigurationError, match="partition"):
        await chains.wait_for_dependencies(b, [a])
    d = await pq.add_job("n", partition_key="k-0")
    assert await chains.wait_for_dependencies(d, [a]) == 1
    await pq.start()
    await wait_for_status(pq, d, JobStatus.COMPLETED)  # type: ignore[arg-type]
    assert list(await chains.parent_results(d)) == [a]
    await pq.close()


# ================================================================ hostile options

_HEALTH = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


class FuzzBench:
    """A queue and a partitioned queue, each with a running workflow ``live``."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        self.q = JobQueue("fz", redis=redis_url, prefix=prefix)
        self.pq = PartitionedQueue("fzp", partitions=3, redis=redis_url, prefix=prefix)
        self.chains = {"queue": JobChainManager(self.q), "partitioned": JobChainManager(self.pq)}
        self.live: dict[str, dict[str, str]] = {}
        self.prefix = prefix

    async def start(self) -> None:
        for where, chains in self.chains.items():
            self.live[where] = await chains.execute_workflow(
                "live", [WorkflowStep("a", "n"), WorkflowStep("b", "n", depends_on=["a"])]
            )

    def queue(self, where: str) -> Any:
        return self.q if where == "queue" else self.pq

    async def snapshot(self) -> dict[bytes, Any]:
        client = await self.q.client()
        keys = [k async for k in client.scan_iter(match=f"{self.prefix}*", count=1000)]
        return {k: await client.dump(k) for k in sorted(keys)}

    async def close(self) -> None:
        await self.q.close()
        await self.pq.close()


@pytest.fixture
async def fuzz(redis_url: str, prefix: str) -> AsyncIterator[FuzzBench]:
    bench = FuzzBench(redis_url, prefix)
    await bench.start()
    yield bench
    await bench.close()


@pytest.mark.timeout(600)  # many examples: wall time scales with the machine
@pytest.mark.redis_only
@settings(max_examples=80, deadline=None, suppress_health_check=_HEALTH)
@given(
    where=st.sampled_from(["queue", "partitioned"]),
    wid=st.one_of(st.none(), st.just("live"), nasty_text(), ids()),
    step=st.one_of(st.none(), st.just("a"), nasty_text()),
    deps=st.one_of(
        st.none(), st.lists(st.one_of(st.sampled_from(["a", "b"]), ids()), max_size=3), ids()
    ),
)
@example(where="partitioned", wid="live", step="extra", deps=["a"])
@example(where="queue", wid="live", step="a", deps=None)
@example(where="queue", wid="\ud800", step=None, deps=None)
@example(where="partitioned", wid=None, step=None, deps=["0:x", "1:y"])
async def test_hostile_workflow_options_fail_alone(
    fuzz: FuzzBench,
    where: str,
    wid: Any,
    step: Any,
    deps: Any,
) -> None:
    """``add_job`` with hostile ``workflow_id`` / ``workflow_step`` / ``depends_on`` on a
    queue and on a partitioned queue: either it adds one job (joined to ``live`` when
    named so), or it raises a ``KitiumQueueError`` having written nothing."""
    live = fuzz.live[where]
    opts: dict[str, Any] = {}
    if wid is not None:
        opts["workflow_id"] = unwrap(wid)
    if step is not None:
        opts["workflow_step"] = unwrap(step)
    if isinstance(deps, list):
        opts["depends_on"] = [live[d] if d in ("a", "b") else unwrap(d) for d in deps]
    elif deps is not None:
        opts["depends_on"] = unwrap(deps)
    chains = fuzz.chains[where]
    before = await fuzz.snapshot()
    total = (await chains.get_workflow_status("live")).total  # type: ignore[union-attr]
    try:
        jid = await fuzz.queue(where).add_job("n", {}, **opts)
    except KitiumQueueError as exc:
        after = await fuzz.snapshot()
        if isinstance(exc, JobRefusedError):
            # Refused inside the enqueue script: only the id counter moved (an automatic
            # id is drawn before the features' accept checks, as for any refused job).
            after = {k: v for k, v in after.items() if not k.endswith(b":id")}
            before = {k: v for k, v in before.items() if not k.endswith(b":id")}
        assert after == before
        return
    info = await fuzz.queue(where).get_job_status(jid)
    assert info is not None and info.name == "n"
    st_after = await chains.get_workflow_status("live")
    assert st_after is not None
    assert st_after.total == total + (opts.get("workflow_id") == "live")
    await fuzz.queue(where).remove_job(jid)  # back to a workflow with room for "a"
