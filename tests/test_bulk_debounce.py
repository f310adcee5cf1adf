"""A debounce of a job added earlier in the same bulk ``add_jobs`` call.

A bulk add puts its waiting jobs in ``wait`` together at the end of the call. A job of
the call that an idempotency key's debounce (in the same call) moved to ``delayed`` was
added to ``wait`` at that end all the same: it sat in both sets, its record saying
``delayed``, and a worker ran it at once and again when it came due. The call now writes
its pending ``wait`` entries before a ``duplicate`` fragment acts on one of its own
jobs: every job is in exactly one set, the one its record names.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import IdempotencyManager, JobQueue, JobStatus
from kitium_queue.features.tenancy import TenantRegistry

DEB = {"idempotency_key": "k", "idempotency_window": "debounce"}


async def _where(q: JobQueue) -> dict[str, list[str]]:
    """The ids in wait and in delayed (the sets, not the records)."""
    return {
        s: [j.id for j in await q.get_jobs_by_status(s)]
        for s in (JobStatus.WAITING.value, JobStatus.DELAYED.value)
    }


async def _status(q: JobQueue, job_id: str) -> str:
    info = await q.get_job_status(job_id)
    return "missing" if info is None else info.status.value


async def test_a_debounce_with_a_delay_in_the_same_call_leaves_the_job_in_delayed_only(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("bd", worker={"concurrency": 2})
    IdempotencyManager(q)
    runs: list[Any] = []

    @q.process("w")
    async def work(job: Any) -> None:
        runs.append(job.data)

    other, a, again = await q.add_jobs(
        [
            ("w", 0),
            ("w", 1, {"idempotency_key": "k"}),
            ("w", 2, {**DEB, "delay": 400}),
        ]
    )
    assert again == a
    assert await _where(q) == {"waiting": [other], "delayed": [a]}
    info = await q.get_job_status(a)
    assert info is not None and info.status is JobStatus.DELAYED and info.data == 2
    await q.start()
    await wait_for_status(q, a, JobStatus.COMPLETED, timeout=5)
    await wait_until(lambda: len(runs) >= 2, 5)
    await asyncio.sleep(0.3)  # a second run (from wait, then from delayed) would show
    assert sorted(runs) == [0, 2]


async def test_further_duplicates_in_the_same_call_keep_one_place(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("bd2")
    IdempotencyManager(q)
    # Debounced to delayed, then debounced again without a delay: back in wait, once.
    a, b, c = await q.add_jobs(
        [
            ("w", 1, {"idempotency_key": "k"}),
            ("w", 2, {**DEB, "delay": 60_000}),
            ("w", 3, DEB),
        ]
    )
    assert a == b == c
    assert await _where(q) == {"waiting": [a], "delayed": []}
    info = await q.get_job_status(a)
    assert info is not None and info.status is JobStatus.WAITING and info.data == 3
    # Debounced without a delay (stays in wait), then pushed back twice.
    ids = await q.add_jobs(
        [
            ("w", 1, {"idempotency_key": "k2"}),
            ("w", 2, {**DEB, "idempotency_key": "k2"}),
            ("w", 3, {**DEB, "idempotency_key": "k2", "delay": 60_000}),
            ("w", 4, {**DEB, "idempotency_key": "k2", "delay": 120_000}),
            ("w", 5, {"idempotency_key": "k2"}),  # a plain duplicate: nothing changes
        ]
    )
    d = ids[0]
    assert set(ids) == {d}
    assert await _where(q) == {"waiting": [a], "delayed": [d]}
    info = await q.get_job_status(d)
    assert info is not None and info.status is JobStatus.DELAYED and info.data == 4
    # A job of the call after the flush still goes to wait at the end.
    e, f, g = await q.add_jobs(
        [
            ("w", 1, {"idempotency_key": "k3"}),
            ("w", 2, {**DEB, "idempotency_key": "k3", "delay": 60_000}),
            ("w", 3),
        ]
    )
    assert e == f and g != e
    assert await _where(q) == {"waiting": [a, g], "delayed": [e, d]}  # e is due first


@pytest.mark.parametrize("first", ["tenancy", "idempotency"])
async def test_a_tenant_job_debounced_in_the_same_call_gives_its_ticket_back(
    make_queue: QueueFactory, first: str
) -> None:
    q = make_queue("bdt", worker={"concurrency": 1, "scheduler": False})
    if first == "idempotency":
        IdempotencyManager(q)
    reg = TenantRegistry(q)
    if first == "tenancy":
        IdempotencyManager(q)
    await reg.create_tenant({"tenant_id": "t", "quota": {"max_concurrency": 1}})
    done: list[str] = []

    async def run(job: Any) -> None:
        done.append(job.id)

    q.process("w", run)
    a, b, again = await q.add_jobs(
        [
            ("w", 1, {"tenant_id": "t", "idempotency_key": "k"}),
            ("w", 2, {"tenant_id": "t"}),
            ("w", 3, {"tenant_id": "t", **DEB, "delay": 60_000}),
        ]
    )
    assert again == a
    assert await _status(q, a) == "delayed"
    where = await _where(q)
    assert a not in where["waiting"] and where["delayed"] == [a]
    await q.start()
    await wait_until(lambda: b in done, 5)
    await asyncio.sleep(0.3)
    assert a not in done and await _status(q, a) == "delayed"
    await q.promote_job(a)
    await wait_until(lambda: a in done, 5)
    assert done.count(a) == 1
