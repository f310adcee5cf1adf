"""A process without tenancy runs a tenant's jobs: the tickets they held come back.

During a rolling deploy a worker without tenancy claims a tenant's ticket holders from
wait and finishes them without the tenancy fragments: their tickets stayed out and the
tenant's count kept them. Before the heal, once all of a tenant's tickets were held that
way its lane was never refilled: its other jobs waited for good, through every sync.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import pytest

from helpers import QueueFactory, wait_until
from kitium_queue import JobQueue
from kitium_queue.features.tenancy import TenantRegistry
from kitium_queue.features.tenancy.heal import heal_tenants


async def _statuses(q: JobQueue, ids: list[str]) -> Counter[str]:
    got: Counter[str] = Counter()
    for job_id in ids:
        info = await q.get_job_status(job_id)
        got["missing" if info is None else info.status.value] += 1
    return got


async def _stranded(
    make_queue: QueueFactory, name: str
) -> tuple[JobQueue, TenantRegistry, list[str]]:
    """Ten jobs of tenant acme (max_concurrency 2): two in wait holding its tickets,
    eight in its lane; a worker without tenancy runs the two."""
    q = make_queue(name)
    reg = TenantRegistry(q)
    await reg.create_tenant({"tenant_id": "acme", "quota": {"max_concurrency": 2}})
    ids = await q.add_jobs([("n", {"i": i}, {"tenant_id": "acme"}) for i in range(10)])
    assert await _statuses(q, ids) == Counter(waiting=2, pending=8)
    plain = make_queue(name, worker={"concurrency": 4})

    @plain.process("n")
    async def n(job: Any) -> None:
        return None

    await plain.start()

    async def two_done() -> bool:
        return (await _statuses(q, ids))["completed"] == 2

    await wait_until(two_done, 10)
    await plain.worker.stop()
    await plain.close()
    assert await _statuses(q, ids) == Counter(completed=2, pending=8)
    return q, reg, ids


async def test_a_heal_gives_the_tickets_back_and_the_count_is_right(
    make_queue: QueueFactory,
) -> None:
    q, reg, ids = await _stranded(make_queue, "th1")
    report = await heal_tenants(q, ["acme"])
    assert (report.tickets, report.running, report.jobs_moved) == (2, 0, 2)
    assert await _statuses(q, ids) == Counter(completed=2, waiting=2, pending=6)
    usage = await reg.get_tenant_usage("acme")
    # The two finished jobs left the tenant's count as release would have done.
    assert (usage.queued, usage.completed) == (8, 2), usage
    again = await heal_tenants(q, ["acme"])
    assert (again.tickets, again.running, again.jobs_moved) == (0, 0, 0)


async def test_a_tenancy_worker_heals_the_lane_by_itself(
    make_queue: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    q, reg, ids = await _stranded(make_queue, "th2")

    @q.process("n")
    async def n(job: Any) -> None:
        return None

    async def all_done() -> bool:
        return (await _statuses(q, ids))["completed"] == 10

    with caplog.at_level(logging.WARNING, logger="kitium_queue"):
        await q.start()
        await wait_until(all_done, 15)
    usage = await reg.get_tenant_usage("acme")
    assert (usage.queued, usage.active, usage.completed) == (0, 0, 10), usage
    said = [r.getMessage() for r in caplog.records if "without tenancy" in r.getMessage()]
    assert said and "2 dispatch ticket(s)" in said[0], said
