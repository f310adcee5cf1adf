"""Review of the dispatch tickets held in ``wait`` only (tenancy: watch, duplicate, the
holder check of ``room``): counts kept exact when a holder out of ``wait`` is found."""

from __future__ import annotations

from helpers import QueueFactory
from kitium_queue import IdempotencyManager, JobQueue
from kitium_queue.features.tenancy import TenantRegistry
from kitium_queue.features.tenancy import keys as tk


async def _tickets(q: JobQueue, tenant: str) -> set[str]:
    client = await q.client()
    return {m.decode() for m in await client.smembers(tk.tickets(q.keys, tenant))}


async def _ran_without_tenancy(q: JobQueue, job_id: str) -> None:
    """What a process without tenancy leaves: the job claimed and completed, its ticket
    and its place in the tenant's count (tq) kept."""
    client = await q.client()
    await client.zrem(q.keys.wait, job_id)
    await client.hset(q.keys.job(job_id), "st", "completed")
    await client.zadd(q.keys.completed, {job_id: 1})


async def test_a_bulk_add_that_finds_a_finished_holder_counts_its_jobs_exactly(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("bulkn")
    reg = TenantRegistry(q)
    await reg.create_tenant({"tenant_id": "t", "quota": {"max_concurrency": 1}})
    a = await q.add_job("n", {}, tenant_id="t")
    await _ran_without_tenancy(q, a)
    assert await _tickets(q, "t") == {a}
    # The first job of the bulk add finds a's ticket at the tenant's limit: a leaves the
    # count. The next job of the same call must add to that count, not to the one the
    # call read before.
    ids = await q.add_jobs([("n", {}, {"tenant_id": "t"}) for _ in range(3)])
    usage = await reg.get_tenant_usage("t")
    assert (usage.queued, usage.completed) == (3, 1), usage
    assert a not in await _tickets(q, "t")
    assert len(ids) == 3


async def test_a_debounce_that_finds_a_finished_holder_takes_it_off_the_count(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("debn")
    reg = TenantRegistry(q)
    IdempotencyManager(q)
    await reg.create_tenant({"tenant_id": "t", "quota": {"max_concurrency": 1}})
    a = await q.add_job("n", {"v": 1}, tenant_id="t", idempotency_key="k")
    await _ran_without_tenancy(q, a)
    # The key's job has finished: a debounce adds a new job (trailing edge), and a's
    # ticket is given back; a leaves the tenant's count as the holder check and the
    # heal make it do (else it would stay counted for good: it holds nothing left to
    # find it by).
    b = await q.add_job(
        "n", {"v": 2}, tenant_id="t", idempotency_key="k", idempotency_window="debounce",
        delay=60_000,
    )  # fmt: skip
    assert b != a
    assert await _tickets(q, "t") == set()
    usage = await reg.get_tenant_usage("t")
    assert (usage.queued, usage.completed) == (1, 1), usage
