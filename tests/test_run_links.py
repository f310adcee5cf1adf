"""Run links, the engine's extension point (``Job.follows``, ``Job.run_context``, the
job-hash field ``fw``, the ``release`` slot's ``context``), filled by workflows, on
both backends, with a process middleware of the test's own standing in for tracing:
a dependent is handed the contexts its parents' runs left, in one claim; a job that
takes part in nothing gets ``None``; contexts the worker must not send (a newline, too
long, not text) are not sent; a parent finished before its dependent was added is
collected when the dependent is added; a step revived by a replay gets its links back;
at most 32 per job; a hand-edited ``fw`` is read as untrusted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import JobQueue, JobStatus
from kitium_queue.features.workflows import JobChainManager, WorkflowStep
from kitium_queue.limits import MAX_FOLLOWS, MAX_RUN_CONTEXT_CHARS


class Contexts:
    """A process middleware that records what each run follows and leaves
    ``context(job)`` (default ``ctx-<job id>``) for the runs that follow it."""

    def __init__(self, queue: JobQueue, context: Callable[[Any], Any] | None = None) -> None:
        self.seen: dict[str, list[tuple[str, ...] | None]] = {}
        self.context = context or (lambda job: f"ctx-{job.id}")
        queue.use_process(self)

    async def __call__(self, job: Any, call_next: Any) -> Any:
        self.seen.setdefault(job.id, []).append(job.follows)
        if job.follows is not None:
            job.run_context = self.context(job)
        return await call_next()


async def workflow_done(chains: JobChainManager, wid: str, state: str = "completed") -> None:
    async def check() -> bool:
        st = await chains.get_workflow_status(wid)
        return st is not None and st.state == state and st.unfinished == 0

    await wait_until(check, 15)


async def test_dependents_get_their_parents_contexts(make_queue: QueueFactory) -> None:
    q = make_queue("rl", worker={"concurrency": 4})
    chains = JobChainManager(q)
    runs = Contexts(q)

    @q.process("s")
    async def s(job: Any) -> str:
        return str(job.id)

    await chains.execute_workflow(
        "w",
        [
            WorkflowStep("a", "s"),
            WorkflowStep("b", "s"),
            WorkflowStep("c", "s", depends_on=["a", "b"]),
            WorkflowStep("d", "s", depends_on=["c"]),
        ],
    )
    plain = await q.add_job("s", {})
    await q.start()
    await workflow_done(chains, "w")
    await wait_for_status(q, plain, JobStatus.COMPLETED)
    # Parents take part (their runs are followed) and follow nothing.
    assert runs.seen["w:a"] == [()] and runs.seen["w:b"] == [()]
    [c] = runs.seen["w:c"]
    assert c is not None and sorted(c) == ["ctx-w:a", "ctx-w:b"]
    assert runs.seen["w:d"] == [("ctx-w:c",)]
    # A job in no relation: nothing asked of it, nothing sent.
    assert runs.seen[plain] == [None]
    # A dependent added after its parent finished takes the context the parent left.
    late = await q.add_job("s", {}, depends_on=["w:c"])
    await wait_for_status(q, late, JobStatus.COMPLETED)
    assert runs.seen[late] == [("ctx-w:c",)]
    # The completed run's context is kept on a followed job's record as its 'm'.
    client = await q.client()
    assert await client.hget(q.keys.job("w:c"), "m") == b"ctx-w:c"
    assert await client.hget(q.keys.job(plain), "m") is None


async def test_contexts_the_worker_must_not_send_are_dropped(make_queue: QueueFactory) -> None:
    q = make_queue("rb", worker={"concurrency": 4})
    chains = JobChainManager(q)
    bad: dict[str, Any] = {
        "b:nl": "two\nlines",
        "b:long": "x" * (MAX_RUN_CONTEXT_CHARS + 1),
        "b:ctl": "bell\x07",
        "b:uni": "caf\u00e9",
        "b:sur": "\ud800",
        "b:num": 12345,
        "b:empty": "",
        "b:max": "y" * MAX_RUN_CONTEXT_CHARS,
    }
    runs = Contexts(q, lambda job: bad.get(job.id, f"ctx-{job.id}"))

    @q.process("s")
    async def s(job: Any) -> None:
        return None

    parents = [name.split(":")[1] for name in bad]
    await chains.execute_workflow(
        "b",
        [
            *(WorkflowStep(p, "s") for p in parents),
            WorkflowStep("kid", "s", depends_on=parents),
        ],
    )
    await q.start()
    await workflow_done(chains, "b")
    # Only the one within the limits reached the dependent; the runs all completed.
    assert runs.seen["b:kid"] == [("y" * MAX_RUN_CONTEXT_CHARS,)]


async def test_at_most_32_links_and_a_failed_parent_that_lets_them_go_on(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("rc", worker={"concurrency": 8})
    chains = JobChainManager(q)
    runs = Contexts(q)

    @q.process("s")
    async def s(job: Any) -> None:
        if job.data and job.data.get("fail"):
            raise RuntimeError("no")

    roots = [f"p{i}" for i in range(MAX_FOLLOWS + 8)]
    await chains.execute_workflow(
        "c",
        [
            WorkflowStep("bad", "s", {"fail": True}, on_failure="continue"),
            *(WorkflowStep(r, "s") for r in roots),
            WorkflowStep("fan", "s", depends_on=roots),
            WorkflowStep("after", "s", depends_on=["bad"]),
        ],
    )
    await q.start()
    await workflow_done(chains, "c")
    [fan] = runs.seen["c:fan"]
    assert fan is not None and len(fan) == MAX_FOLLOWS == len(set(fan))
    assert set(fan) <= {f"ctx-c:{r}" for r in roots}
    # A parent failed for good under 'continue': its run's context is passed on.
    assert runs.seen["c:after"] == [("ctx-c:bad",)]


async def test_a_revived_step_gets_its_links_back(make_queue: QueueFactory) -> None:
    q = make_queue("rr", worker={"concurrency": 4})
    chains = JobChainManager(q)
    gate = {"closed": True}
    runs = Contexts(q, lambda job: f"ctx-{job.id}-{'closed' if gate['closed'] else 'open'}")

    @q.process("gate")
    async def gate_fn(job: Any) -> str:
        if gate["closed"]:
            raise RuntimeError("gate closed")
        return "open"

    @q.process("s")
    async def s(job: Any) -> None:
        return None

    await chains.execute_workflow(
        "r",
        [
            WorkflowStep("g", "gate"),
            WorkflowStep("x", "s", depends_on=["g"]),
            WorkflowStep("y", "s", depends_on=["x"]),
        ],
    )
    await q.start()
    await workflow_done(chains, "r", "failed")
    gate["closed"] = False
    assert await q.replay_dlq() == 1
    await workflow_done(chains, "r")
    # The replayed run's context (not the failed one's; once) reaches x, and x's reaches
    # y: both were re-created from their kept definitions.
    assert runs.seen["r:x"] == [("ctx-r:g-open",)]
    assert runs.seen["r:y"] == [("ctx-r:x-open",)]


async def test_a_hand_edited_follows_field_is_read_as_untrusted(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("ru")
    runs = Contexts(q)

    @q.process("s")
    async def s(job: Any) -> None:
        return None

    jids = [await q.add_job("s", {}) for _ in range(3)]
    client = await q.client()
    lines = ["a", "", "b", "z" * (MAX_RUN_CONTEXT_CHARS + 1), *(f"n{i}" for i in range(60))]
    await client.hset(q.keys.job(jids[0]), "fw", "\n".join(lines))
    await client.hset(q.keys.job(jids[1]), "fw", b"\xff\xfe\n\xc3")
    await client.hset(q.keys.job(jids[2]), "fw", "")
    await q.start()
    for jid in jids:
        await wait_for_status(q, jid, JobStatus.COMPLETED)
    # The first 32 lines, less the empty and the too long ones.
    kept = tuple(x for x in lines[:MAX_FOLLOWS] if x and len(x) <= MAX_RUN_CONTEXT_CHARS)
    assert runs.seen[jids[0]] == [kept]
    assert runs.seen[jids[1]] == [("\ufffd\ufffd", "\ufffd")]
    assert runs.seen[jids[2]] == [()]
