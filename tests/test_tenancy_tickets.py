"""Dispatch tickets are held in ``wait`` only: a holder that leaves it gives its ticket back.

Under fair dispatch a tenant's ticket holders sit in ``wait`` and the rest of its jobs
in its lane; tickets count against its ``max_concurrency``. A holder that another
feature took out of ``wait`` kept its ticket, and with a small cap one such ticket held
the tenant's lane until the workers' sync healed it (30 s, warning about "a process
without tenancy"):

* a debounce with a delay moved a holder to ``delayed``: the tenant's next job waited in
  its lane for the whole delay (the ``duplicate`` fragment gives the ticket back now);
* a holder that a process without tenancy ran was found only when all of the tenant's
  ``weight x quantum`` tickets were out: a capped tenant's lane waited for the sync
  (checked now once the tickets reach the tenant's limit, several holders at a time);
* a tenant whose ``max_concurrency`` is below ``quantum / 4`` refilled its lane only
  once no ticket was out: a holder that may not start yet (its rate-limit key's window
  is full) kept the tenant's free slot empty;
* the sync's heal gives back tickets of jobs parked aside or delayed without the
  warning about a process without tenancy;
* a tenant's usage read by a Redis user refused a command (no ``+scard``) reported the
  refused keys as "another Redis type... delete it": the refusal is raised now.

The breaker and FIFO-group cases are in ``tests/test_features_combined.py``.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
import redis as redis_sync

from _redis import RedisServer
from helpers import QueueFactory, all_completed, gated, wait_until
from kitium_queue import IdempotencyManager, JobQueue
from kitium_queue.errors import PermissionDeniedError
from kitium_queue.features.tenancy import TenantRegistry
from kitium_queue.features.tenancy import keys as tk
from kitium_queue.features.tenancy.heal import heal_tenants
from test_tenancy_readonly import PASSWORD, READER, acl_server  # noqa: F401 (a fixture)


async def _status(q: JobQueue, job_id: str) -> str:
    info = await q.get_job_status(job_id)
    return "missing" if info is None else info.status.value


async def _tickets(q: JobQueue, tenant: str) -> set[str]:
    client = await q.client()
    return {m.decode() for m in await client.smembers(tk.tickets(q.keys, tenant))}


def _enable(q: JobQueue, first: str) -> TenantRegistry:
    """Tenancy and idempotency on ``q``, ``first`` enabled first (the fragments' order
    in the duplicate slot must not matter)."""
    if first == "idempotency":
        IdempotencyManager(q)
    reg = TenantRegistry(q)
    if first == "tenancy":
        IdempotencyManager(q)
    return reg


async def _is(q: JobQueue, job_id: str, status: str) -> bool:
    return await _status(q, job_id) == status


# ------------------------------------------------------------------ debounce
@pytest.mark.parametrize("first", ["tenancy", "idempotency"])
async def test_a_debounced_holder_gives_its_ticket_to_the_next_job(
    make_queue: QueueFactory, first: str
) -> None:
    q = make_queue("deb", worker={"concurrency": 1, "scheduler": False})
    reg = _enable(q, first)
    await reg.create_tenant({"tenant_id": "t", "quota": {"max_concurrency": 1}})
    gate, done = gated(q)
    await q.start()
    # The worker's one slot is taken by a job of no tenant: t's jobs wait.
    busy = await q.add_job("w", {"hold": 1})
    await wait_until(lambda: _is(q, busy, "active"), 5)
    a = await q.add_job("w", {"v": 1}, tenant_id="t", idempotency_key="k")
    b = await q.add_job("w", {}, tenant_id="t")
    assert await _tickets(q, "t") == {a}  # a holds t's one ticket, b waits in its lane
    assert await _status(q, b) == "pending"
    # Debounced with a delay: a goes to delayed, and its ticket to b at once.
    again = await q.add_job(
        "w", {"v": 2}, tenant_id="t", idempotency_key="k", idempotency_window="debounce",
        delay=60_000,
    )  # fmt: skip
    assert again == a and await _status(q, a) == "delayed"
    assert await _tickets(q, "t") == {b}
    assert await _status(q, b) == "waiting"
    gate.set()
    await wait_until(lambda: b in done, 5)
    assert a not in done and await _status(q, a) == "delayed"
    # Due, it meets admission as any delayed job, and runs.
    await q.promote_job(a)
    await wait_until(lambda: a in done, 5)
    # Its processor returned; its outcome is recorded a moment later (the worker's
    # outcome batch): the tenant's totals are read once both jobs are completed.
    await wait_until(lambda: all_completed(q, [a, b]), 5)
    usage = await reg.get_tenant_usage("t")
    assert (usage.queued, usage.active, usage.completed) == (0, 0, 2), usage
    assert await _tickets(q, "t") == set()


async def test_a_debounce_without_a_delay_keeps_the_ticket(make_queue: QueueFactory) -> None:
    q = make_queue("deb0")
    reg = TenantRegistry(q)
    IdempotencyManager(q)
    await reg.create_tenant({"tenant_id": "t", "quota": {"max_concurrency": 1}})
    a = await q.add_job("w", {"v": 1}, tenant_id="t", idempotency_key="k")
    b = await q.add_job("w", {}, tenant_id="t")
    again = await q.add_job(
        "w", {"v": 2}, tenant_id="t", idempotency_key="k", idempotency_window="debounce"
    )
    # Still in wait, data replaced: it keeps its ticket and b its place in the lane.
    assert again == a and await _status(q, a) == "waiting"
    assert await _tickets(q, "t") == {a} and await _status(q, b) == "pending"


# ------------------------------------------------------------------ at the tenant's limit
async def _noop(job: Any) -> None:
    return None


async def test_a_ticket_a_process_without_tenancy_left_is_found_at_the_cap(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("cap")
    reg = TenantRegistry(q)
    await reg.create_tenant({"tenant_id": "t", "quota": {"max_concurrency": 1}})
    a = await q.add_job("n", {}, tenant_id="t")
    assert await _tickets(q, "t") == {a}
    # A worker without tenancy (the previous release) runs it: its ticket stays out.
    plain = make_queue("cap", worker={"concurrency": 1, "scheduler": False})
    plain.process("n", _noop)
    await plain.start()
    await wait_until(lambda: _is(q, a, "completed"), 10)
    await plain.close()
    assert await _tickets(q, "t") == {a}
    # The tenant's next job finds its one ticket held by a job out of wait: given back
    # (the job leaves the count as release would have done), and the job goes to wait.
    # Before, only 16 tickets out (weight x quantum) were checked: it waited in the lane
    # until a worker's sync.
    b = await q.add_job("n", {}, tenant_id="t")
    assert await _status(q, b) == "waiting"
    assert await _tickets(q, "t") == {b}
    usage = await reg.get_tenant_usage("t")
    assert (usage.queued, usage.completed) == (1, 1), usage


async def test_holders_in_wait_are_passed_over_to_find_one_out_of_it(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("cap3")
    reg = TenantRegistry(q)
    client = await q.client()
    # Six tenants (the holders are checked in random order: a check that stopped at the
    # first holder in wait would find the stale one in 1 of 3, all six in 1 of 729).
    for i in range(6):
        t = f"t{i}"
        await reg.create_tenant({"tenant_id": t, "quota": {"max_concurrency": 3}})
        first = await q.add_jobs([("n", {}, {"tenant_id": t}) for _ in range(3)])
        assert await _tickets(q, t) == set(first)
        # One of its three holders left wait behind tenancy's back (as a process without
        # tenancy leaves it: claimed and run): the two in wait do not stop the check.
        await client.zrem(q.keys.wait, first[1])
        await client.hset(q.keys.job(first[1]), "st", "completed")
        await client.zadd(q.keys.completed, {first[1]: 1})
        nxt = await q.add_job("n", {}, tenant_id=t)
        assert await _status(q, nxt) == "waiting", t
        assert await _tickets(q, t) == {first[0], first[2], nxt}, t


async def test_a_capped_tenant_refills_beside_a_holder_that_may_not_start_yet(
    make_queue: QueueFactory,
) -> None:
    # quantum 16: refills move 4 jobs at a time unless the tenant has no ticket out; a
    # tenant capped at 2 never has 4 free, so it refills what it has.
    q = make_queue("refill", worker={"concurrency": 4, "scheduler": False})
    reg = TenantRegistry(q)
    q.set_rate_limit("rk", max=1, duration=60_000)
    await reg.create_tenant({"tenant_id": "t", "quota": {"max_concurrency": 2}})
    gate, done = gated(q)
    await q.start()
    a = await q.add_job("w", {"hold": 1}, tenant_id="t", rate_limit_key="rk")
    await wait_until(lambda: _is(q, a, "active"), 5)
    # Its rate-limit key's window is full for a minute: it waits in wait, holding a ticket.
    b = await q.add_job("w", {}, tenant_id="t", rate_limit_key="rk")
    c = await q.add_job("w", {}, tenant_id="t")
    # b holds no free slot meanwhile: c may take the second one at once (a claim that
    # found b held back), else at a's end.
    assert b in await _tickets(q, "t")
    gate.set()
    # a's end frees a slot: c takes it beside b (before, only once b had started).
    await wait_until(lambda: c in done, 5)
    assert b not in done and await _status(q, b) == "waiting"


# ------------------------------------------------------------------ the sync's heal
async def test_the_heal_gives_back_tickets_of_jobs_parked_aside_without_warning(
    make_queue: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    q = make_queue("hq")
    reg = _enable(q, "tenancy")
    await reg.create_tenant({"tenant_id": "t", "quota": {"max_concurrency": 1}})
    a = await q.add_job("w", {"v": 1}, tenant_id="t", idempotency_key="k")
    b = await q.add_job("w", {}, tenant_id="t")
    # A producer without tenancy (the previous release) debounces a into delayed: its
    # ticket stays out, and b waits in the lane.
    old = make_queue("hq")
    IdempotencyManager(old)
    again = await old.add_job(
        "w", {"v": 2}, idempotency_key="k", idempotency_window="debounce", delay=60_000
    )
    assert again == a and await _status(q, a) == "delayed"
    assert await _tickets(q, "t") == {a} and await _status(q, b) == "pending"
    with caplog.at_level(logging.DEBUG, logger="kitium_queue"):
        report = await heal_tenants(q, ["t"])
    assert (report.tickets, report.running, report.jobs_moved, report.parked) == (0, 0, 1, 1)
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert warned == [], [r.getMessage() for r in warned]
    assert await _tickets(q, "t") == {b} and await _status(q, b) == "waiting"
    # a is unfinished: it stays counted.
    assert (await reg.get_tenant_usage("t")).queued == 2


# ------------------------------------------------------------------ usage and the ACL
async def test_usage_read_without_a_command_is_refused_not_reported_damaged(
    acl_server: RedisServer,  # noqa: F811  (the fixture of test_tenancy_readonly)
    caplog: pytest.LogCaptureFixture,
) -> None:
    prefix = f"tk{uuid.uuid4().hex[:6]}"
    q = JobQueue("uq", redis=acl_server.url, prefix=prefix)
    try:
        async with TenantRegistry(q) as reg:
            await reg.create_tenant({"tenant_id": "t"})
            await q.add_jobs([("x", {}, {"tenant_id": "t"}) for _ in range(2)])
    finally:
        await q.close()
    admin = redis_sync.Redis(host="127.0.0.1", port=acl_server.port)
    name = f"u{uuid.uuid4().hex[:8]}"
    granted = [c for c in READER if c != "+scard"]
    admin.execute_command(
        "ACL", "SETUSER", name, "reset", "on", f">{PASSWORD}", f"%R~{prefix}:*",
        "resetchannels", "-@all", *granted,
    )  # fmt: skip
    url = f"redis://{name}:{PASSWORD}@127.0.0.1:{acl_server.port}/0"
    try:
        with caplog.at_level(logging.WARNING, logger="kitium_queue"):
            async with TenantRegistry(redis=url, prefix=prefix) as reg:
                with pytest.raises(PermissionDeniedError) as err:
                    await reg.get_tenant_usage("t")
        # A missing permission: the queue's keys and the commands to grant, never advice
        # to delete live keys.
        assert "'uq'" in str(err.value) and "command" in str(err.value), err.value
        said = [r.getMessage() for r in caplog.records]
        assert not any("another Redis type" in m for m in said), said
    finally:
        admin.acl_deluser(name)
        admin.close()


async def test_usage_still_reads_a_damaged_key_as_empty(
    make_queue: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    q = make_queue("ud")
    reg = TenantRegistry(q)
    await reg.create_tenant({"tenant_id": "t"})
    await q.add_job("x", {}, tenant_id="t")
    client = await q.client()
    await client.set(tk.running(q.keys, "t"), "not a set")
    with caplog.at_level(logging.WARNING, logger="kitium_queue"):
        usage = await reg.get_tenant_usage("t")
    assert (usage.queued, usage.active) == (1, 0), usage
    said = [r.getMessage() for r in caplog.records if "another Redis type" in r.getMessage()]
    assert said and tk.running(q.keys, "t") in said[0], said
