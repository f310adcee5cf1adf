"""Tenancy: ticket holders that flow control leaves in ``wait`` (a rate-limit key's window
full, without ``park_rate_limited_jobs``) beside a capped tenant's other jobs."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from _cluster import LocalCluster
from helpers import QueueFactory, gated, wait_until
from kitium_queue import JobQueue
from kitium_queue.errors import ConfigurationError
from kitium_queue.features.tenancy import TenantRegistry
from kitium_queue.features.tenancy import keys as tk
from test_tenancy_tickets import _status, _tickets

# A rate-limit key's window far longer than any wait below.
WINDOW_MS = 60_000


@pytest.mark.parametrize("flow_first", [False, True])
async def test_several_holders_held_back_leave_a_capped_tenant_its_slot(
    make_queue: QueueFactory, flow_first: bool
) -> None:
    # Two holders wait for rk's window (max_concurrency 1): before, the refill asked
    # for half the limit counted with them (2 places) where one was free, and the
    # tenant's job without the key waited for the window too.
    q = make_queue("several", worker={"concurrency": 4, "scheduler": False})
    if flow_first:
        q.set_rate_limit("rk", max=1, duration=WINDOW_MS)
    reg = TenantRegistry(q)
    if not flow_first:
        q.set_rate_limit("rk", max=1, duration=WINDOW_MS)
    await reg.create_tenant({"tenant_id": "t", "quota": {"max_concurrency": 1}})
    _gate, done = gated(q)
    await q.start()
    opener = await q.add_job("w", {}, tenant_id="t", rate_limit_key="rk")
    await wait_until(lambda: opener in done, 10)  # rk's window: full for a minute
    held = []
    for _ in range(2):
        held.append(await q.add_job("w", {}, tenant_id="t", rate_limit_key="rk"))

        async def holding(n: int = len(held)) -> bool:
            return len(await _tickets(q, "t")) >= n

        await wait_until(holding, 10)
    assert await _tickets(q, "t") == set(held)
    c = await q.add_job("w", {}, tenant_id="t")
    # Neither holder may start before rk's window ends: the tenant's one slot is c's.
    await wait_until(lambda: c in done, 10)
    assert [await _status(q, h) for h in held] == ["waiting", "waiting"]


def _count_claims(q: JobQueue) -> list[float]:
    """The times of the queue's claim calls (a wrapper around ``q.call``)."""
    seen: list[float] = []
    call = q.call

    def counting(script: str, args: Any = ()) -> Any:
        if script == "claim":
            seen.append(asyncio.get_running_loop().time())
        return call(script, args)

    q.call = counting  # type: ignore[method-assign]
    return seen


async def test_no_wake_storm_beside_holders_held_back(make_queue: QueueFactory) -> None:
    q = make_queue("storm", worker={"concurrency": 4, "scheduler": False})
    reg = TenantRegistry(q)
    q.set_rate_limit("rk", max=1, duration=WINDOW_MS)
    await reg.create_tenant({"tenant_id": "t", "quota": {"max_concurrency": 1}})
    _gate, done = gated(q)
    claims = _count_claims(q)
    await q.start()
    opener = await q.add_job("w", {}, tenant_id="t", rate_limit_key="rk")
    await wait_until(lambda: opener in done, 10)
    for i in range(40):
        await q.add_job("w", {"i": i}, tenant_id="t", rate_limit_key="rk")
    client = await q.client()

    async def settled() -> bool:
        before = (await client.zcard(tk.lane(q.keys, "t")), len(claims))
        await asyncio.sleep(0.5)
        return before == (await client.zcard(tk.lane(q.keys, "t")), len(claims))

    await wait_until(settled, 30)
    n = len(claims)
    await asyncio.sleep(2.0)
    # Idle: every job left waits for rk's window; the workers do not claim in a loop.
    assert len(claims) - n <= 4, len(claims) - n
    assert len(await _tickets(q, "t")) <= 16


async def test_holders_held_back_hide_no_other_tenant_from_claim(
    make_queue: QueueFactory,
) -> None:
    # A capped tenant whose ticket quota (weight 70 x quantum 16) is above claim's scan
    # window (1000 candidates), every job of it held back by rk's window.
    q = make_queue("hide", worker={"concurrency": 4, "scheduler": False})
    reg = TenantRegistry(q)
    q.set_rate_limit("rk", max=1, duration=WINDOW_MS)
    await reg.create_tenant({"tenant_id": "t", "weight": 70, "quota": {"max_concurrency": 8}})
    await reg.create_tenant({"tenant_id": "u"})
    _gate, done = gated(q)
    claims = _count_claims(q)
    await q.start()
    opener = await q.add_job("w", {}, tenant_id="t", rate_limit_key="rk")
    await wait_until(lambda: opener in done, 10)
    await q.add_jobs(
        [("w", {"n": i}, {"tenant_id": "t", "rate_limit_key": "rk"}) for i in range(2500)]
    )
    client = await q.client()

    async def settled() -> bool:
        before = (await client.zcard(tk.lane(q.keys, "t")), len(claims))
        await asyncio.sleep(0.5)
        return before == (await client.zcard(tk.lane(q.keys, "t")), len(claims))

    await wait_until(settled, 60)
    other = await q.add_job("w", {}, tenant_id="u")
    await wait_until(lambda: other in done, 10)
    # t's holders held back: no more than its free slots again (8 + 8).
    assert len(await _tickets(q, "t")) <= 16


async def test_holders_held_back_never_take_a_tenant_past_its_cap_or_rate(
    make_queue: QueueFactory,
) -> None:
    # rk's short window opens and closes while the lane's jobs refilled beside its
    # holders run: the tenant's cap and rate hold all the same, with two workers.
    rnd = random.Random(53)
    q = make_queue("stress", worker={"concurrency": 6, "scheduler": False})
    q2 = make_queue("stress", worker={"concurrency": 6, "scheduler": False})
    reg = TenantRegistry(q)
    TenantRegistry.enable(q2)
    rate = {"max": 5, "duration": 700}
    await reg.create_tenant({"tenant_id": "t", "quota": {"max_concurrency": 2, "rate_limit": rate}})
    running: list[int] = [0]
    most: list[int] = [0]
    done: list[str] = []

    async def run(job: Any) -> None:
        running[0] += 1
        most[0] = max(most[0], running[0])
        try:
            await asyncio.sleep(job.data["ms"] / 1000)
        finally:
            running[0] -= 1
            done.append(job.id)

    for each in (q, q2):
        each.set_rate_limit("rk", max=1, duration=250)
        each.process("w", run)
        await each.start()
    ids = []
    for _ in range(50):
        extra = {"rate_limit_key": "rk"} if rnd.random() < 0.5 else {}
        ids.append(await q.add_job("w", {"ms": rnd.randint(0, 120)}, tenant_id="t", **extra))
        if rnd.random() < 0.3:
            await asyncio.sleep(rnd.random() / 10)
    await wait_until(lambda: len(done) == len(ids), 60)
    assert most[0] <= 2, most[0]
    client = await q.client()
    starts = sorted([int(await client.hget(q.keys.job(j), "ps")) for j in ids])
    # The tenant's fixed windows, as claim opens them: at most 5 starts in each.
    opened, n = None, 0
    for t in starts:
        if opened is None or t >= opened + 700:
            opened, n = t, 0
        n += 1
        assert n <= 5, (opened, starts)
    assert await _tickets(q, "t") == set()


@pytest.mark.redis_only
async def test_sync_registers_a_producer_only_queue_on_a_cluster(prefix: str) -> None:
    # A queue whose only process adds jobs (no tenancy there, no worker ever started),
    # on a cluster: it is there, and registers; a mistyped name is refused.
    with LocalCluster(masters=3, replicas=0) as cluster:
        plain = JobQueue("made", redis=cluster.url, prefix=prefix)
        reg = TenantRegistry(redis=cluster.url, prefix=prefix)
        try:
            await plain.add_job("x", {})
            await reg.create_tenant({"tenant_id": "acme"})
            with pytest.raises(ConfigurationError, match="'mdae' not found"):
                await reg.sync(queues=["made", "mdae"])
            assert await reg.queues() == []
            await reg.sync(queues=["made"])
            assert await reg.queues() == ["made"]
            client = await plain.client()
            assert await client.hget(tk.tenant(plain.keys, "acme"), "on") == b"1"
        finally:
            await plain.close()
            await reg.close()
