"""A tenant's damaged count of unfinished jobs is recounted in bounded steps (real Redis).

The count ``n`` of ``tn:<t>`` holding something that is not an integer (written by
hand) is recounted from the tenant's jobs by ``TenantRegistry.sync()`` and every
worker's copy of the quotas. The recount was one script that scanned the whole
database (about 1 s of Redis per million keys, everyone else waiting); it is now a
pass of bounded steps (``tn_recount.lua``, a few ms each at the defaults), and the
tenancy fragments keep the pass exact while jobs are added, end and come back between
its steps. The counts checked here are the jobs whose records say they are counted
(``tn`` the tenant, ``tq`` set), read one by one.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import pytest
import redis.asyncio as aioredis

from helpers import QueueFactory
from kitium_queue import JobQueue
from kitium_queue.features.tenancy import TenantRegistry
from kitium_queue.features.tenancy import keys as tk
from kitium_queue.features.tenancy.install import TN_RECOUNT, recount, run_script
from test_parking import T0, Engine

pytestmark = pytest.mark.redis_only


async def _step(q: JobQueue, tenant: str, per: int = 5, scans: int = 1) -> tuple[str, int]:
    client = await q.client()
    key = tk.tenant(q.keys, tenant)
    reply = await run_script(client, TN_RECOUNT, [key], [tenant, per, scans, "pass-1"])
    return reply[0].decode(), int(reply[1]) if reply[0] != b"damaged" else -1


async def _truth(q: JobQueue, ids: list[str], tenant: str) -> int:
    """Jobs of ``tenant`` whose records say they are counted."""
    client = await q.client()
    pipe = client.pipeline(transaction=False)
    for i in ids:
        pipe.hmget(q.keys.job(i), "tn", "tq")
    rows = await pipe.execute()
    return sum(1 for tn, tq in rows if tn == tenant.encode() and tq is not None)


async def _tenants(q: JobQueue) -> TenantRegistry:
    reg = TenantRegistry(q)
    for t in ("a", "b"):
        await reg.create_tenant({"tenant_id": t})
    return reg


class Traffic:
    """Jobs of tenants a and b added, removed, run and run again between steps."""

    def __init__(self, q: JobQueue, seed: int) -> None:
        self.q, self.e, self.rnd = q, Engine(q), random.Random(seed)
        self.ids: list[str] = []
        self.done: list[str] = []
        self.now = T0

    async def add(self, n: int) -> None:
        for _ in range(n):
            self.ids.append(await self.q.add_job("x", {}, tenant_id=self.rnd.choice("aab")))

    async def one(self) -> None:
        self.now += 1
        op = self.rnd.random()
        if op < 0.35:
            await self.add(self.rnd.randint(1, 3))
        elif op < 0.55:
            waiting = await self.q.get_jobs_by_status("waiting", 0, 20)
            if waiting:
                await self.q.remove_job(self.rnd.choice(waiting).id)
        elif op < 0.85:
            _, _, got, token = await self.e.claim(self.now, n=self.rnd.randint(1, 4))
            for jid in got:
                if self.rnd.random() < 0.7:
                    await self.e.complete(self.now, jid, token)
                else:  # failed for good: to the DLQ
                    args = (jid, token, "F", "boom", "", 0, -1, -1, "")
                    assert await self.e.run("finish", self.now, "1", *args) == [b"ok"]
            self.done += got
        elif self.done:
            # Back from completed or the DLQ: counted again when claimed (admission).
            await self.q.retry_job(self.done.pop(self.rnd.randrange(len(self.done))))


@pytest.mark.parametrize("seed", range(4))
async def test_a_recount_in_steps_stays_exact_while_jobs_come_and_go(
    make_queue: QueueFactory, redis_client: aioredis.Redis, seed: int
) -> None:
    q = make_queue("rc")
    await _tenants(q)
    traffic = Traffic(q, seed)
    await traffic.add(150)
    key = tk.tenant(q.keys, "a")
    await redis_client.hset(key, "n", "garbage")
    steps = 0
    while True:
        status, counted = await _step(q, "a")
        steps += 1
        if status == "ok":
            break
        assert status == "more"
        assert (await redis_client.hget(key, "rc") or b"").startswith(b"pass-1@")
        for _ in range(traffic.rnd.randint(0, 3)):
            await traffic.one()
    assert steps > 10  # a pass of many steps, traffic between them
    assert counted == await _truth(q, traffic.ids, "a")
    assert await redis_client.hget(key, "n") == str(counted).encode()
    assert await redis_client.hmget(key, "rc", "rcn", "rcc", "rcs") == [None] * 4
    # The count then follows the traffic as usual.
    for _ in range(30):
        await traffic.one()
    assert int(await redis_client.hget(key, "n") or 0) == await _truth(q, traffic.ids, "a")


async def test_two_processes_share_one_pass(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q = make_queue("rc2")
    await _tenants(q)
    traffic = Traffic(q, 7)
    await traffic.add(200)
    await redis_client.hset(tk.tenant(q.keys, "a"), "n", "-3")
    client = await q.client()

    async def noise() -> None:
        for _ in range(40):
            await traffic.one()

    got = await asyncio.gather(
        recount(client, q.keys, "a", per_scan=3, scans=1),
        recount(client, q.keys, "a", per_scan=3, scans=1),
        noise(),
    )
    truth = await _truth(q, traffic.ids, "a")
    assert await redis_client.hget(tk.tenant(q.keys, "a"), "n") == str(truth).encode()
    # Each driver returns the count as it found it when the pass was over for it.
    assert got[0] is not None and got[1] is not None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rcn", "x"),
        ("rcn", "-1"),
        ("rcc", "abc"),
        ("rcc", "9" * 20),
        ("rc", "p" * 101),
        # Walked on another server process (a restart, a failover): its cursor means
        # nothing here (keys hash with another seed), so the pass starts again.
        ("rcs", "0" * 40),
    ],
)
async def test_a_pass_whose_fields_were_damaged_starts_again(
    make_queue: QueueFactory, redis_client: aioredis.Redis, field: str, value: str
) -> None:
    q = make_queue("rc3")
    await _tenants(q)
    traffic = Traffic(q, 3)
    await traffic.add(60)
    key = tk.tenant(q.keys, "a")
    await redis_client.hset(key, "n", "garbage")
    for _ in range(3):
        assert (await _step(q, "a"))[0] == "more"
    await redis_client.hset(key, field, value)
    for _ in range(5):
        await traffic.one()  # the fragments meet the damaged pass too
    while (result := await _step(q, "a"))[0] == "more":
        await traffic.one()
    assert result == ("ok", await _truth(q, traffic.ids, "a"))
    assert await redis_client.hmget(key, "rc", "rcn", "rcc", "rcs") == [None] * 4


async def test_a_count_written_over_by_hand_ends_the_pass(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q = make_queue("rc4")
    await _tenants(q)
    await Traffic(q, 1).add(40)
    key = tk.tenant(q.keys, "a")
    await redis_client.hset(key, "n", "garbage")
    assert (await _step(q, "a"))[0] == "more"
    await redis_client.hset(key, "n", "7")
    assert await _step(q, "a") == ("ok", 7)
    assert await redis_client.hmget(key, "n", "rc", "rcn", "rcc", "rcs") == [b"7", *[None] * 4]


async def test_each_step_is_bounded_and_sync_finishes_the_pass(
    make_queue: QueueFactory, redis_client: aioredis.Redis, caplog: Any
) -> None:
    q = make_queue("rc5")
    reg = await _tenants(q)
    await q.add_jobs([("x", {}, {"tenant_id": "a"}) for _ in range(1500)])
    await q.add_jobs([("x", {}, {"tenant_id": "b"}) for _ in range(500)])
    key = tk.tenant(q.keys, "a")
    await redis_client.hset(key, "n", "garbage")
    # One SCAN of 100 keys: about 100 of the 2,000 job records examined, no more.
    status, counted = await _step(q, "a", per=100, scans=1)
    assert status == "more" and 0 < counted <= 200
    # The registry's copy finishes the pass (steps of 2 SCANs of 1,000 keys).
    with caplog.at_level(logging.WARNING):
        await reg.sync()
    assert await redis_client.hget(key, "n") == b"1500"
    assert "recounted from its jobs: 1500" in caplog.text
    assert await redis_client.hmget(key, "rc", "rcn", "rcc", "rcs") == [None] * 4


async def test_a_tenant_key_of_another_type_is_reported_and_left(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q = make_queue("rc6")
    key = tk.tenant(q.keys, "a")
    await redis_client.set(key, "x")
    assert (await _step(q, "a"))[0] == "damaged"
    assert await redis_client.get(key) == b"x"
    client = await q.client()
    assert await recount(client, q.keys, "a") is None
