"""Jobs parked behind a concurrency key that nothing would release come back.

A job over its key's cap is parked behind ``cc:<key>`` and comes back when a counted job
of the key finishes. A cap removed while jobs are parked behind it (the next job runs
uncounted), or a key whose counted job a process without flow control ran (its finish
releases nothing), left the key's parked jobs pending for good; the flow-control heal
(``features/flowheal.py``) sends them back to wait.
"""

from __future__ import annotations

import asyncio
from typing import Any

from helpers import QueueFactory, all_completed, wait_for_status, wait_until
from kitium_queue import JobQueue, JobStatus


async def test_removing_a_cap_while_jobs_are_parked_behind_it_lets_them_all_run(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("fh-remove", worker={"concurrency": 4})
    q.set_concurrency_limit("tenant:*", 1)
    gate = asyncio.Event()

    async def work(job: Any) -> None:
        if job.data["i"] == 0:
            await gate.wait()

    q.process("w", work)
    await q.start()
    ids = [await q.add_job("w", {"i": i}, concurrency_key="tenant:1") for i in range(10)]
    await wait_for_status(q, ids[0], JobStatus.ACTIVE)
    await wait_for_status(q, ids[9], JobStatus.PENDING)
    q.flow.remove_concurrency_limit("tenant:*")
    gate.set()
    # Well within the workers' 30 s heal interval: the removal itself released them.
    await wait_until(lambda: all_completed(q, ids), 10)


async def _stranded(make_queue: QueueFactory, name: str) -> tuple[JobQueue, list[str]]:
    """Ten jobs of key tenant:1 (cap 1): the first was claimed and counted by a process
    with flow control, which then went away; a worker without flow control recovered and
    ran it (no release). The other nine are parked behind 'cc:tenant:1'."""
    declared = make_queue(name)  # declares the cap, never started
    declared.set_concurrency_limit("tenant:*", 1)
    first = await declared.add_job("w", {"i": 0}, concurrency_key="tenant:1")
    # A claim by a flow-control worker that dies at once: a 200 ms lease nobody renews.
    got = await declared.ctx.run("claim", [1, 200, 0, 0, 5, "1", "gone-worker", 100])
    assert got[0] in (b"ok", "ok"), got
    ids = [first] + [
        await declared.add_job("w", {"i": i}, concurrency_key="tenant:1") for i in range(1, 10)
    ]
    for job_id in ids[1:]:
        await wait_for_status(declared, job_id, JobStatus.PENDING)
    plain = make_queue(name)

    @plain.process("w")
    async def work(job: Any) -> None:
        return None

    await plain.start()
    await wait_for_status(plain, first, JobStatus.COMPLETED, timeout=10)
    await plain.worker.stop()
    await plain.close()
    return declared, ids


async def test_parked_jobs_of_a_key_a_worker_without_flow_control_ran_complete(
    make_queue: QueueFactory,
) -> None:
    _, ids = await _stranded(make_queue, "fh-plain")
    q = make_queue("fh-plain", worker={"concurrency": 4})
    q.set_concurrency_limit("tenant:*", 1)
    running: list[int] = []
    most = [0]

    async def work(job: Any) -> None:
        running.append(job.data["i"])
        most[0] = max(most[0], len(running))
        await asyncio.sleep(0.01)
        running.remove(job.data["i"])

    q.process("w", work)
    await q.start()
    await wait_until(lambda: all_completed(q, ids), 10)
    assert most[0] == 1  # the cap still holds


async def test_explain_says_the_heal_releases_a_stranded_job(make_queue: QueueFactory) -> None:
    q, ids = await _stranded(make_queue, "fh-explain")
    said = await q.explain(ids[1])
    (r,) = [r for r in said.reasons if r.code == "concurrency-cap"]
    assert "0 of 1 running" in r.message and "heal" in r.message, r.message
    assert "within 30 s" in r.message and "queue.flow.heal()" in r.message
    assert "the next one to finish" not in r.message
    # A process that declares no cap for the key any more says so.
    other = make_queue("fh-explain")
    other.set_rate_limit("partner:*", max=10)
    said = await other.explain(ids[1])
    (r,) = [r for r in said.reasons if r.code == "concurrency-cap"]
    assert "no cap declared" in r.message and "None" not in r.message, r.message
    # The heal run now moves one job back to wait (cap 1, nothing running).
    report = await q.flow.heal()
    assert (report.members_dropped, report.jobs_moved, report.keys) == (1, 1, 1)
    await wait_for_status(q, ids[1], JobStatus.WAITING)
    assert (await q.get_job_status(ids[2])).status is JobStatus.PENDING  # type: ignore[union-attr]
