"""A process without ``FIFOQueueManager`` runs a group's job: the turn it held comes back.

During a rolling deploy (or from a script that forgot the manager) a worker without the
feature claims the jobs of a group that are in wait and finishes them without passing
the groups' release fragment, so their turns stay held. Before the heal every later job
of those groups waited for good: nothing of the group was in wait to be claimed, and a
new job joined the line behind the held turn.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from helpers import QueueFactory, app_module, wait_for_status, wait_until
from kitium_queue import JobQueue, JobStatus
from kitium_queue.cli import main
from kitium_queue.features.groups import FIFOQueueManager


async def _status(q: JobQueue, job_id: str) -> JobStatus | None:
    info = await q.get_job_status(job_id)
    return None if info is None else info.status


async def _stranded(make_queue: QueueFactory, name: str) -> tuple[JobQueue, dict[str, list[str]]]:
    """Three jobs in each of groups g1 and g2, whose heads a worker without the feature
    ran: the other jobs of both groups are left in their lines behind finished jobs."""
    q = make_queue(name)
    FIFOQueueManager(q)
    ids: dict[str, list[str]] = {}
    for g in ("g1", "g2"):  # a loop: Python 3.10 refuses an await in a nested comprehension
        ids[g] = [await q.add_job("n", {"g": g, "i": i}, message_group_id=g) for i in range(3)]
    plain = make_queue(name, worker={"concurrency": 2})

    @plain.process("n")
    async def n(job: Any) -> None:
        return None

    await plain.start()
    for g in ("g1", "g2"):
        await wait_for_status(plain, ids[g][0], JobStatus.COMPLETED)
    await plain.worker.stop()
    await plain.close()
    for g in ("g1", "g2"):
        assert await _status(q, ids[g][1]) is JobStatus.PENDING
    return q, ids


async def test_a_new_job_of_the_group_gives_the_turn_back(make_queue: QueueFactory) -> None:
    q, ids = await _stranded(make_queue, "hq1")
    # An enqueue into a group that looks full checks its holders on one call in eight
    # (by the Redis clock's ms): the line's head goes on at one of the next few adds.
    added = 0
    while await _status(q, ids["g1"][1]) is JobStatus.PENDING and added < 400:
        await q.add_job("n", {"g": "g1", "i": 3 + added}, message_group_id="g1")
        added += 1
        await asyncio.sleep(0.0007)
    assert await _status(q, ids["g1"][1]) is JobStatus.WAITING, added
    assert await _status(q, ids["g1"][2]) is JobStatus.PENDING
    # g2 got no new job: still in its line until a heal.
    assert await _status(q, ids["g2"][1]) is JobStatus.PENDING
    report = await FIFOQueueManager.for_queue(q).heal()
    assert (report.turns_freed, report.jobs_moved, report.groups) == (1, 1, 1)
    assert await _status(q, ids["g2"][1]) is JobStatus.WAITING
    again = await FIFOQueueManager.for_queue(q).heal()
    assert (again.turns_freed, again.jobs_moved, again.groups) == (0, 0, 0)


async def test_the_workers_heal_the_groups_by_themselves_in_order(
    make_queue: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    q, ids = await _stranded(make_queue, "hq2")
    ran: dict[str, list[int]] = {"g1": [], "g2": []}

    @q.process("n")
    async def n(job: Any) -> None:
        ran[job.data["g"]].append(job.data["i"])

    with caplog.at_level(logging.WARNING, logger="kitium_queue"):
        await q.start()
        await wait_until(lambda: ran == {"g1": [1, 2], "g2": [1, 2]}, 15)
    for g in ("g1", "g2"):
        for job_id in ids[g]:
            assert await _status(q, job_id) is JobStatus.COMPLETED
    said = [r.getMessage() for r in caplog.records if "FIFO message groups" in r.getMessage()]
    assert said and "without FIFOQueueManager" in said[0] and "2 turn(s)" in said[0], said


@pytest.fixture
def app(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[str]:
    source = (
        "from kitium_queue import JobQueue\n"
        "from kitium_queue.features.groups import FIFOQueueManager\n"
        f"queue = JobQueue('hq3', redis={redis_url!r}, prefix={prefix!r})\n"
        "fifo = FIFOQueueManager(queue)\n"
    )
    with app_module(tmp_path, source, "kq_cli_groups_heal") as module:
        yield f"{module}:queue"


def test_groups_heal_command(app: str, redis_url: str, prefix: str) -> None:
    async def strand() -> list[str]:
        factory = QueueFactory(redis_url, prefix)
        try:
            _, ids = await _stranded(factory, "hq3")
            return ids["g2"]
        finally:
            await factory.aclose()

    g2 = asyncio.run(strand())
    out = CliRunner().invoke(main, ["groups", "heal", app, "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output) == {"turns_freed": 2, "jobs_moved": 2, "groups": 2}

    async def head() -> JobStatus | None:
        q = JobQueue("hq3", redis=redis_url, prefix=prefix)
        try:
            return await _status(q, g2[1])
        finally:
            await q.close()

    assert asyncio.run(head()) is JobStatus.WAITING
    text = CliRunner().invoke(main, ["groups", "heal", app])
    assert text.exit_code == 0 and text.output.splitlines()[0] == "turns_freed\t0", text.output
