"""A process without ``JobChainManager`` finishes a parent: its dependents still run.

During a rolling deploy (or from a script that forgot the manager) a worker without the
feature claims a plain parent, or a workflow's root step, and finishes it without
passing the feature's release fragment: the parent's step stays open. Before the heal
its dependents waited for good, parked behind it; a worker with the manager started
afterwards ran none of them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from helpers import QueueFactory, app_module, wait_for_status, wait_until
from kitium_queue import JobQueue, JobStatus
from kitium_queue.cli import main
from kitium_queue.features.workflows import JobChainManager, WorkflowStep


@dataclass
class Stranded:
    """The jobs of ``_stranded``: chain a1 -> b1 -> c1, workflow w (a -> b -> c), f1
    (fails) -> g1, and d, which depends on x (not due yet) and y."""

    q: JobQueue
    chains: JobChainManager
    ids: dict[str, str]


async def _status(q: JobQueue, job_id: str) -> JobStatus | None:
    info = await q.get_job_status(job_id)
    return None if info is None else info.status


async def _stranded(make_queue: QueueFactory, name: str) -> Stranded:
    """The producer (with the manager, not started) adds the jobs; a worker of the same
    queue without the manager runs every one that is in wait (a1, w's a, f1, y)."""
    q = make_queue(name)
    chains = JobChainManager(q)
    ids: dict[str, str] = {}
    ids["a1"] = await q.add_job("n", {"k": "a1"})
    ids["b1"] = await q.add_job("n", {"k": "b1"}, depends_on=[ids["a1"]])
    ids["c1"] = await q.add_job("n", {"k": "c1"}, depends_on=[ids["b1"]])
    steps = await chains.execute_workflow(
        "w",
        [
            WorkflowStep("a", "n", {"k": "wa"}),
            WorkflowStep("b", "n", {"k": "wb"}, depends_on=["a"]),
            WorkflowStep("c", "n", {"k": "wc"}, depends_on=["b"]),
        ],
    )
    ids.update({f"w{s}": jid for s, jid in steps.items()})
    ids["f1"] = await q.add_job("boom", {"k": "f1"}, attempts=1)
    ids["g1"] = await q.add_job("n", {"k": "g1"}, depends_on=[ids["f1"]])
    ids["x"] = await q.add_job("n", {"k": "x"}, delay=3_600_000)
    ids["y"] = await q.add_job("n", {"k": "y"})
    ids["d"] = await q.add_job("n", {"k": "d"}, depends_on=[ids["x"], ids["y"]])

    plain = make_queue(name, worker={"concurrency": 4})

    @plain.process("n")
    async def n(job: Any) -> Any:
        return {"k": job.data["k"], "by": "plain"}

    @plain.process("boom")
    async def boom(job: Any) -> None:
        raise RuntimeError("boom")

    await plain.start()
    for k in ("a1", "wa", "y"):
        await wait_for_status(plain, ids[k], JobStatus.COMPLETED, timeout=10)
    await wait_for_status(plain, ids["f1"], JobStatus.FAILED, JobStatus.DLQ, timeout=10)
    await plain.worker.stop()
    await plain.close()
    for k in ("b1", "c1", "wb", "wc", "g1", "d"):
        assert await _status(q, ids[k]) is JobStatus.PENDING, k
    return Stranded(q, chains, ids)


async def test_heal_releases_the_dependents(make_queue: QueueFactory) -> None:
    s = await _stranded(make_queue, "wh1")
    q, ids = s.q, s.ids
    why = await q.explain(ids["b1"])
    text = " ".join(r.message for r in why.reasons)
    assert f"job {ids['a1']} (completed)" in text and "without JobChainManager" in text, text

    report = await s.chains.heal()
    # a1 and w's a completed (b1 and wb made ready); f1 failed for good: its dependent
    # g1 is cancelled (the default on_failure), as on release. d waits behind x (not due
    # yet), so y, its other parent, is not met yet.
    assert (report.parents, report.dependents) == (3, 2)
    assert await _status(q, ids["g1"]) is None
    # Released: they go to wait at the next claim (the parent's timer, as on release).
    for k in ("b1", "wb"):
        why = await q.explain(ids[k])
        assert not [r for r in why.reasons if r.code == "dependencies"], why
    why = await q.explain(ids["wc"])
    text = " ".join(r.message for r in why.reasons if r.code == "dependencies")
    assert f"job {ids['wb']} (pending)" in text and "without JobChainManager" not in text, text
    why = await q.explain(ids["d"])
    text = " ".join(r.message for r in why.reasons if r.code == "dependencies")
    assert f"job {ids['x']} (delayed)" in text and "once its other parents finished" in text, text
    again = await s.chains.heal()
    assert (again.parents, again.dependents) == (0, 0)


async def test_a_worker_with_the_manager_runs_everything_in_order(
    make_queue: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    s = await _stranded(make_queue, "wh2")
    q, ids = s.q, s.ids
    ran: list[str] = []

    @q.process("n")
    async def n(job: Any) -> Any:
        ran.append(job.data["k"])
        return {"k": job.data["k"], "by": "capable"}

    with caplog.at_level(logging.WARNING, logger="kitium_queue"):
        await q.start()
        await wait_until(lambda: {"b1", "c1", "wb", "wc"} <= set(ran), 15, message=lambda: str(ran))
    for k in ("a1", "b1", "c1", "wa", "wb", "wc"):
        assert await _status(q, ids[k]) is JobStatus.COMPLETED, k
    assert ran.index("b1") < ran.index("c1") and ran.index("wb") < ran.index("wc"), ran
    wf = await s.chains.get_workflow_status("w")
    assert wf is not None and wf.state == "completed"
    said = [
        r.getMessage() for r in caplog.records if "releasing their dependents" in r.getMessage()
    ]
    assert said and "without JobChainManager" in said[0] and "3 job(s)" in said[0], said

    # d waited for x (due in an hour) and y, which the plain worker ran: once x runs
    # here, d waits behind its own blocker for y alone; a heal releases it.
    await q.promote_job(ids["x"])
    await wait_for_status(q, ids["x"], JobStatus.COMPLETED, timeout=10)
    why = await q.explain(ids["d"])
    text = " ".join(r.message for r in why.reasons if r.code == "dependencies")
    assert f"job {ids['y']} (completed)" in text and "heal()" in text, text
    report = await s.chains.heal()
    assert (report.parents, report.dependents) == (1, 1)
    await wait_for_status(q, ids["d"], JobStatus.COMPLETED, timeout=10)
    assert ran[-1] == "d", ran


@pytest.fixture
def app(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[str]:
    source = (
        "from kitium_queue import JobQueue\n"
        "from kitium_queue.features.workflows import JobChainManager\n"
        f"queue = JobQueue('wh3', redis={redis_url!r}, prefix={prefix!r})\n"
        "chains = JobChainManager(queue)\n"
    )
    with app_module(tmp_path, source, "kq_cli_workflows_heal") as module:
        yield f"{module}:queue"


def test_workflows_heal_command(app: str, redis_url: str, prefix: str) -> None:
    async def strand() -> dict[str, str]:
        factory = QueueFactory(redis_url, prefix)
        try:
            return (await _stranded(factory, "wh3")).ids
        finally:
            await factory.aclose()

    ids = asyncio.run(strand())
    out = CliRunner().invoke(main, ["workflows", "heal", app, "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output) == {"parents": 3, "dependents": 2}

    async def explain() -> Any:
        q = JobQueue("wh3", redis=redis_url, prefix=prefix)
        JobChainManager(q)
        try:
            return await q.explain(ids["b1"])
        finally:
            await q.close()

    why = asyncio.run(explain())
    assert not [r for r in why.reasons if r.code == "dependencies"], why
    text = CliRunner().invoke(main, ["workflows", "heal", app])
    assert text.exit_code == 0 and text.output.splitlines()[0] == "parents\t0", text.output
