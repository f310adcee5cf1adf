"""Tenancy: registering queues by hand, the declarations a sync writes, and ticket
holders that another feature holds back in ``wait``.

* ``TenantRegistry.sync(queues=[...])`` and ``kitium-queue tenants sync --queue NAME``
  registered any name, a mistyped one too: its registration mark kept it in the
  registry's set for good (a queue with a mark is never found gone) and every tenant
  change was copied into its keys. A name none of whose keys exists and that no worker
  serves is refused now, naming it, and nothing is written.
* ``sync()`` registered the registry's own queue without its declarations hash
  (``quantum``, ``fair``, ``quotas``), which the quota copies read to refill a tenant's
  lane: after ``clear()`` (which deletes it) a raised ``max_concurrency`` left the jobs
  held in the lane until the workers' next sync. ``sync()`` writes it now, as a worker's
  own registration does.
* A tenant's own rate window holds no ticket (the holder goes back to the lane and
  gives it back): its other jobs wait for the window, as its quota says. But a holder
  that flow control leaves in ``wait`` (its rate-limit key's window full, without
  ``park_rate_limited_jobs``) kept the only ticket of a tenant capped at 1, and the
  tenant's jobs without that key waited for the key's window (a minute here). Such a
  holder keeps its ticket and its place, and holds no free slot meanwhile.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner

from helpers import QueueFactory, app_module, gated, wait_until
from kitium_queue import JobQueue
from kitium_queue.cli import main as cli_main
from kitium_queue.errors import ConfigurationError
from kitium_queue.features.tenancy import TenantRegistry
from kitium_queue.features.tenancy import keys as tk
from kitium_queue.keys import QueueKeys

# A rate-limit key's window far longer than any wait below: a job that waits for it
# shows as not started.
WINDOW_MS = 60_000


async def _keys_of(client: Any, prefix: str, name: str) -> list[bytes]:
    return [k async for k in client.scan_iter(match=f"{prefix}:{{{name}}}:*", count=1000)]


async def _status(q: JobQueue, job_id: str) -> str:
    info = await q.get_job_status(job_id)
    return "missing" if info is None else info.status.value


async def _is(q: JobQueue, job_id: str, status: str) -> bool:
    return await _status(q, job_id) == status


async def _tickets(q: JobQueue, tenant: str) -> set[str]:
    client = await q.client()
    return {m.decode() for m in await client.smembers(tk.tickets(q.keys, tenant))}


# ------------------------------------------------------------------ 1: names that are no queue
@pytest.mark.redis_only
async def test_sync_refuses_a_name_that_is_no_queue_and_writes_nothing(
    redis_url: str, prefix: str, redis_client: aioredis.Redis
) -> None:
    q = JobQueue("orders", redis=redis_url, prefix=prefix)
    plain = JobQueue("invoices", redis=redis_url, prefix=prefix)  # no tenancy here
    served = JobQueue("mail", redis=redis_url, prefix=prefix, worker={"scheduler": False})
    try:
        reg = TenantRegistry(q)
        await reg.create_tenant({"tenant_id": "acme", "quota": {"max_concurrency": 1}})
        await q.add_job("x", {}, tenant_id="acme")
        assert await reg.queues() == ["orders"]

        with pytest.raises(ConfigurationError) as err:
            await reg.sync(queues=["ordres"])
        text = str(err.value)
        assert "'ordres' not found" in text and "nothing was registered" in text, text
        assert "Check the name" in text, text
        # Several: all named; the existing one beside them is not registered either.
        await plain.add_job("x", {})
        with pytest.raises(ConfigurationError) as err:
            await reg.sync(queues=["invoices", "ordres", "oders"])
        assert "'oders', 'ordres' not found" in str(err.value), str(err.value)
        assert await _keys_of(redis_client, prefix, "ordres") == []
        assert await _keys_of(redis_client, prefix, "oders") == []
        assert await reg.queues() == ["orders"]
        # A tenant change reaches no mistyped queue.
        await reg.update_tenant("acme", weight=2)
        assert await _keys_of(redis_client, prefix, "ordres") == []

        # A queue with a job of its own registers, and gets the copies.
        assert await reg.sync(queues=["invoices"]) == 1
        assert await reg.queues() == ["invoices", "orders"]
        assert await redis_client.hget(tk.tenant(plain.keys, "acme"), "on") == b"1"

        # So does one with nothing but a live worker.
        async def noop(job: Any) -> None:
            return None

        served.process("x", noop)
        await served.start()
        await wait_until(lambda: redis_client.exists(served.keys.workers), 10)
        await reg.sync(queues=["mail"])
        assert await reg.queues() == ["invoices", "mail", "orders"]
    finally:
        await served.close()
        await plain.close()
        await q.close()


@pytest.mark.redis_only
def test_tenants_sync_cli_refuses_a_mistyped_queue(
    tmp_path: Path, redis_url: str, prefix: str
) -> None:
    source = (
        "from kitium_queue import JobQueue\n"
        "from kitium_queue.features.tenancy import TenantRegistry\n"
        f"queue = JobQueue('orders', redis={redis_url!r}, prefix={prefix!r})\n"
        "TenantRegistry.enable(queue)\n"
    )

    async def setup() -> None:
        q = JobQueue("orders", redis=redis_url, prefix=prefix)
        TenantRegistry.enable(q)
        try:
            reg = TenantRegistry(q)
            await reg.create_tenant({"tenant_id": "acme"})
            await q.add_job("x", {}, tenant_id="acme")
        finally:
            await q.close()

    async def state() -> tuple[list[str], list[bytes]]:
        client = aioredis.Redis.from_url(redis_url)
        try:
            async with TenantRegistry(redis=redis_url, prefix=prefix) as reg:
                return await reg.queues(), await _keys_of(client, prefix, "ordres")
        finally:
            await client.aclose()

    asyncio.run(setup())
    with app_module(tmp_path, source, "kq_leftover_sync") as module:
        out = CliRunner().invoke(
            cli_main, ["tenants", "sync", f"{module}:queue", "--queue", "ordres"]
        )
    assert out.exit_code != 0, out.output
    assert "'ordres' not found" in out.output, out.output
    assert asyncio.run(state()) == (["orders"], [])


# ------------------------------------------------------------------ 2: declarations
async def test_sync_writes_the_declarations_its_queue_enables_tenancy_with(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("decl", worker={"scheduler": False})
    TenantRegistry.enable(q, quantum=8)
    reg = TenantRegistry(q, quantum=8)
    await reg.create_tenant({"tenant_id": "t", "quota": {"max_concurrency": 1}})
    await q.add_job("x", {}, tenant_id="t")  # this process's first: registered
    client = await q.client()
    want = {b"quantum": b"8", b"fair": b"1", b"quotas": b"1"}
    assert await client.hgetall(tk.declarations(q.keys)) == want
    await q.clear()  # deletes them (the counts' reset), keeps the registration
    assert await client.hgetall(tk.declarations(q.keys)) == {}
    await reg.sync()
    assert await client.hgetall(tk.declarations(q.keys)) == want

    # What they are for: a raised cap hands the lane's jobs their room at once.
    for _ in range(3):
        await q.add_job("x", {}, tenant_id="t")
    assert (await reg.get_tenant_usage("t", ["decl"])).held == 2
    await reg.update_tenant("t", quota={"max_concurrency": 3})
    assert (await reg.get_tenant_usage("t", ["decl"])).held == 0
    assert await client.zcard(q.keys.wait) == 3


# ------------------------------------------------------------------ 3: holders held back
async def test_a_tenants_own_rate_window_holds_no_ticket(make_queue: QueueFactory) -> None:
    # Evidence for the tenant's own rate limit: its jobs wait in its lane, no ticket out.
    q = make_queue("own", worker={"concurrency": 4, "scheduler": False})
    reg = TenantRegistry(q)
    rate = {"max": 1, "duration": WINDOW_MS}
    await reg.create_tenant({"tenant_id": "t", "quota": {"max_concurrency": 1, "rate_limit": rate}})
    done: list[str] = []

    async def run(job: Any) -> None:
        done.append(job.id)

    q.process("w", run)
    await q.start()
    a = await q.add_job("w", {}, tenant_id="t")
    await wait_until(lambda: a in done, 10)
    b = await q.add_job("w", {}, tenant_id="t")
    c = await q.add_job("w", {}, tenant_id="t")
    await asyncio.sleep(0.3)
    assert await _status(q, b) == "pending" and await _status(q, c) == "pending"
    assert await _tickets(q, "t") == set()
    usage = await reg.get_tenant_usage("t")
    assert (usage.held, usage.rate_used, usage.active) == (2, 1, 0)


def _rate_limited(make_queue: QueueFactory, name: str) -> tuple[JobQueue, TenantRegistry]:
    q = make_queue(name, worker={"concurrency": 4, "scheduler": False})
    reg = TenantRegistry(q)
    q.set_rate_limit("rk", max=1, duration=WINDOW_MS)
    return q, reg


async def test_a_holder_waiting_for_its_rate_key_leaves_a_capped_tenant_its_slot(
    make_queue: QueueFactory,
) -> None:
    q, reg = _rate_limited(make_queue, "held")
    await reg.create_tenant({"tenant_id": "t", "quota": {"max_concurrency": 1}})
    gate, done = gated(q)
    await q.start()
    a = await q.add_job("w", {"hold": 1}, tenant_id="t", rate_limit_key="rk")
    await wait_until(lambda: _is(q, a, "active"), 10)
    b = await q.add_job("w", {}, tenant_id="t", rate_limit_key="rk")  # its window: full
    c = await q.add_job("w", {}, tenant_id="t")
    assert await _status(q, c) == "pending"  # the one slot is a's
    gate.set()
    # a's end frees the slot: c takes it beside b, which waits for its key's window
    # (before: c waited for it too, the whole minute).
    await wait_until(lambda: c in done, 10)
    assert b not in done and await _status(q, b) == "waiting"
    assert b in await _tickets(q, "t")

    # Nothing of the tenant runs, b still held back, the worker idle: a new job starts
    # all the same (its lane's first job wakes a worker, whose claim finds b held back).
    await wait_until(lambda: _is(q, c, "completed"), 10)
    await asyncio.sleep(0.5)
    d = await q.add_job("w", {}, tenant_id="t")
    await wait_until(lambda: d in done, 10)
    assert b not in done


async def test_the_first_job_of_an_empty_lane_wakes_a_worker_beside_a_holder(
    make_queue: QueueFactory,
) -> None:
    # No worker runs: what a job added leaves for the workers is read directly. The
    # holder's ticket is all of the tenant's room (max_concurrency 1) and no job of the
    # tenant runs, so no job's end will bring a claim: the new job wakes a worker, whose
    # claim finds whether the holder is held back (then the new job gets the slot).
    q, reg = _rate_limited(make_queue, "wake")
    await reg.create_tenant({"tenant_id": "t", "quota": {"max_concurrency": 1}})
    await reg.create_tenant({"tenant_id": "u", "quota": {"max_concurrency": 1}})
    client = await q.client()
    b = await q.add_job("w", {}, tenant_id="t", rate_limit_key="rk")
    assert await _tickets(q, "t") == {b}
    await client.delete(q.keys.marker)
    c = await q.add_job("w", {}, tenant_id="t")
    assert await _status(q, c) == "pending"
    assert await client.zcard(q.keys.marker) == 1
    # Not again while its lane holds jobs (the claim woken refills them in turn)...
    await client.delete(q.keys.marker)
    await q.add_job("w", {}, tenant_id="t")
    assert await client.zcard(q.keys.marker) == 0
    # ... nor for a tenant with a job running (its end brings the claim).
    u1 = await q.add_job("w", {}, tenant_id="u")
    await client.sadd(tk.running(q.keys, "u"), "elsewhere")
    await client.hset(q.keys.job("elsewhere"), mapping={"st": "active", "tn": "u"})
    await client.delete(q.keys.marker)
    await q.add_job("w", {}, tenant_id="u")
    assert await client.zcard(q.keys.marker) == 0
    assert u1 in await _tickets(q, "u")


async def test_a_holder_the_global_cap_stops_at_keeps_its_share(
    make_queue: QueueFactory,
) -> None:
    # Flow control's global cap reached: the claim stops at the holder (nothing could
    # start), which is not held back for itself: its tenant's lane is not refilled.
    q = make_queue("stop", worker={"concurrency": 4, "scheduler": False})
    reg = TenantRegistry(q)
    q.set_global_concurrency(1)
    await reg.create_tenant({"tenant_id": "t", "quota": {"max_concurrency": 1}})
    await reg.create_tenant({"tenant_id": "u"})
    gate = asyncio.Event()

    async def run(job: Any) -> None:
        if job.data.get("hold"):
            await gate.wait()

    q.process("w", run)
    await q.start()
    x = await q.add_job("w", {"hold": 1}, tenant_id="u")
    await wait_until(lambda: _is(q, x, "active"), 10)
    b = await q.add_job("w", {}, tenant_id="t")
    c = await q.add_job("w", {}, tenant_id="t")  # wakes a worker: its claim stops at b
    await asyncio.sleep(0.5)
    assert await _tickets(q, "t") == {b}
    assert await _status(q, c) == "pending"
    gate.set()
    await wait_until(lambda: _is(q, c, "completed"), 10)
    assert await _status(q, b) == "completed"


async def test_holders_held_back_take_no_more_than_the_tenants_tickets(
    make_queue: QueueFactory,
) -> None:
    q, reg = _rate_limited(make_queue, "bound")  # quantum 16: 16 tickets for weight 1
    await reg.create_tenant({"tenant_id": "t", "quota": {"max_concurrency": 1}})
    await reg.create_tenant({"tenant_id": "u"})
    done: list[str] = []

    async def run(job: Any) -> None:
        done.append(job.id)

    q.process("w", run)
    await q.start()
    first = await q.add_job("w", {}, tenant_id="t", rate_limit_key="rk")
    await wait_until(lambda: first in done, 10)
    await q.add_jobs(
        [("w", {"n": i}, {"tenant_id": "t", "rate_limit_key": "rk"}) for i in range(60)]
    )
    client = await q.client()

    async def settled() -> bool:
        before = await client.zcard(tk.lane(q.keys, "t"))
        await asyncio.sleep(0.3)
        return bool(before == await client.zcard(tk.lane(q.keys, "t")))

    await wait_until(settled, 20)
    # Every one of them waits for the key's window: the held-back holders stop at the
    # tenant's ticket quota, the rest stay in its lane (out of claim's way).
    tickets = await _tickets(q, "t")
    assert 1 <= len(tickets) <= 16, len(tickets)
    assert await client.zcard(q.keys.wait) == len(tickets)
    assert await client.zcard(tk.lane(q.keys, "t")) == 60 - len(tickets)
    # Another tenant's job starts at once.
    other = await q.add_job("w", {}, tenant_id="u")
    await wait_until(lambda: other in done, 10)


# A worker process that runs "hang" jobs forever (until it is killed) and "open" jobs at
# once, with the same declarations as the test's queue (tenancy, the rate limit of rk).
_WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from kitium_queue import JobQueue
    from kitium_queue.features.tenancy import TenantRegistry

    url, prefix, WINDOW_MS = sys.argv[1], sys.argv[2], int(sys.argv[3])
    q = JobQueue("chaos", redis=url, prefix=prefix,
                 settings={"lock_duration": 1500, "max_stalled_count": 5},
                 worker={"concurrency": 2, "scheduler": False})
    TenantRegistry.enable(q)
    q.set_rate_limit("rk", max=1, duration=WINDOW_MS)

    async def run(job):
        if job.name == "hang":
            client = await q.client()
            await client.rpush(prefix + ":hung", job.id)
            await asyncio.Event().wait()

    q.process("hang", run)
    q.process("open", run)
    asyncio.run(q.run_worker())
    """
)


@pytest.mark.redis_only
async def test_a_worker_killed_while_holding_the_slot_then_the_lane_goes_on(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    script = tmp_path / "hang_worker.py"
    script.write_text(_WORKER)
    settings = {"lock_duration": 1500, "max_stalled_count": 5}
    q = JobQueue(
        "chaos",
        redis=redis_url,
        prefix=prefix,
        settings=settings,
        worker={"concurrency": 2, "scheduler": False},
    )
    reg = TenantRegistry(q)
    q.set_rate_limit("rk", max=1, duration=WINDOW_MS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), redis_url, prefix, str(WINDOW_MS), env=env
    )
    spans: list[tuple[float, float]] = []
    try:
        await reg.create_tenant({"tenant_id": "t", "quota": {"max_concurrency": 1}})
        client = await q.client()
        opener = await q.add_job("open", {}, tenant_id="t", rate_limit_key="rk")
        await wait_until(lambda: _is(q, opener, "completed"), 20)  # rk's window: full
        a = await q.add_job("hang", {}, tenant_id="t")
        await wait_until(lambda: client.lrange(f"{prefix}:hung", 0, -1), 20)
        b = await q.add_job("open", {}, tenant_id="t", rate_limit_key="rk")
        c = await q.add_job("open", {}, tenant_id="t")
        proc.send_signal(signal.SIGKILL)  # a's slot held by a dead worker
        await proc.wait()

        async def run(job: Any) -> None:
            start = time.monotonic()
            await asyncio.sleep(0.05)
            spans.append((start, time.monotonic()))

        q.process("hang", run)
        q.process("open", run)
        await q.start()
        # a's lease runs out: it is recovered and runs again; its end frees the slot,
        # which c takes beside b (held back by rk's window for a minute).
        await wait_until(lambda: _is(q, a, "completed"), 20)
        await wait_until(lambda: _is(q, c, "completed"), 20)
        assert await _status(q, b) == "waiting"
        # The cap held: no two of the tenant's runs overlapped, in this process.
        spans.sort()
        assert all(x[1] <= y[0] for x, y in itertools.pairwise(spans)), spans
        assert await client.scard(tk.running(QueueKeys("chaos", prefix), "t")) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await q.close()
