"""A job flow control holds back takes no tenant dispatch ticket, whatever the enable order.

Flow control's and multi-tenancy's fragments both ran at the default order, so which
ran first depended on which feature was enabled first, and every ``set_*`` call of flow
control re-added its fragments at the end. With tenancy's first, a new job of a tenant
got a dispatch ticket and was then parked behind its full concurrency key: the ticket
counted against the tenant's ``max_concurrency`` and kept the tenant's next jobs in its
lane until tenancy's holder check or its 30 s heal. Flow control's ``enqueue`` and
``admission`` fragments now run at ``slots.ORDER_HOLD``, before tenancy's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from helpers import QueueFactory, all_completed, gated, wait_until
from kitium_queue import JobQueue
from kitium_queue.features.flowcontrol import FEATURE as FLOW
from kitium_queue.features.tenancy import TenantRegistry
from kitium_queue.features.tenancy import keys as tk
from kitium_queue.features.tenancy.lua import FEATURE as TENANCY


@pytest.fixture
async def rq(redis_url: str, prefix: str) -> AsyncIterator[QueueFactory]:
    """Queues on the real Redis (tenancy needs it)."""
    factory = QueueFactory(redis_url, prefix)
    yield factory
    await factory.aclose()


async def _tickets(q: JobQueue, tenant: str) -> set[str]:
    client = await q.client()
    return {m.decode() for m in await client.smembers(tk.tickets(q.keys, tenant))}


async def _status(q: JobQueue, job_id: str) -> str:
    info = await q.get_job_status(job_id)
    return "missing" if info is None else info.status.value


def _enable(q: JobQueue, order: str) -> TenantRegistry:
    """Tenancy (fair dispatch) and flow control (key ``ck`` capped at 1) on ``q``."""
    if order == "tenancy-first":
        reg = TenantRegistry(q)
        q.set_concurrency_limit("ck", 1)
    else:
        q.set_concurrency_limit("ck", 1)
        reg = TenantRegistry(q)
    if order == "flow-first-then-set":
        # Flow control installs its fragments again on every declaration.
        q.set_rate_limit("other-*", max=5, duration=1000)
        q.set_concurrency_limit("ck", 1)
    return reg


@pytest.mark.parametrize("order", ["tenancy-first", "flow-first", "flow-first-then-set"])
async def test_a_job_parked_behind_a_full_concurrency_key_holds_no_ticket(
    rq: QueueFactory, order: str
) -> None:
    q = rq("fto", worker={"concurrency": 3, "scheduler": False})
    reg = _enable(q, order)
    for slot in ("enqueue", "admission"):
        names = q.scripts.slot_names(slot)
        assert names.index(FLOW) < names.index(TENANCY), (slot, names)
    await reg.create_tenant({"tenant_id": "t", "quota": {"max_concurrency": 1}})
    gate, done = gated(q)
    await q.start()
    # Concurrency key ck is at its cap (1), held by a job of no tenant.
    busy = await q.add_job("w", {"hold": 1}, concurrency_key="ck")
    await wait_until(lambda: _is(q, busy, "active"), 5)
    # t's job of key ck is parked behind the key, without a ticket of t.
    a = await q.add_job("w", {}, tenant_id="t", concurrency_key="ck")
    assert await _status(q, a) == "pending"
    assert await _tickets(q, "t") == set()
    # So t's one slot is free for its next job, which runs at once.
    b = await q.add_job("w", {}, tenant_id="t")
    await wait_until(lambda: b in done, 5)
    assert await _status(q, a) == "pending"
    assert await _tickets(q, "t") == set()
    # The key frees: the parked job runs.
    gate.set()
    await wait_until(lambda: a in done, 5)
    # Its processor returned; its outcome is recorded a moment later (the worker's
    # outcome batch): the tenant's totals are read once both jobs are completed.
    await wait_until(lambda: all_completed(q, [a, b]), 5)
    usage = await reg.get_tenant_usage("t")
    assert (usage.queued, usage.active, usage.completed) == (0, 0, 2), usage
    assert await _tickets(q, "t") == set()


async def _is(q: JobQueue, job_id: str, status: str) -> bool:
    return await _status(q, job_id) == status
