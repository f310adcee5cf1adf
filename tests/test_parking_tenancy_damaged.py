"""Parking keys and tenancy keys damaged outside kitium-queue (by hand or by another client).

The keys of parked jobs (``lua/lib_parking.lua``: a blocker's set, the parked index,
the park timers and rules, slot-errors) and of tenancy (``features/tenancy``: a tenant's
count ``n`` in ``tn:<t>``, its running set ``tn-run:<t>``) overwritten with another type
or holding garbage. Each defect was reproduced on a real Redis before it was fixed:

* claim meeting a damaged blocker set, parked index or park-timers key failed with a
  bare WRONGTYPE after its first writes (a job marked active left in wait, its
  job-started event written) -- on every call, so the worker handed out nothing at all,
  other jobs included. The damaged key is now skipped (nothing of it written) and
  recorded in slot-errors (``damaged:<key>``, naming it and the repair); a job its check
  cannot park stays in wait, and every other job flows;
* enqueue parking a job behind a damaged blocker set or index failed after the batch's
  records were written (orphan records in no set); the job now goes to wait;
* a fragment failing while slot-errors held another type failed finish after the job's
  lease token was deleted (the outcome lost, the job run twice);
* unpark meeting a damaged index moved the jobs to wait but left the parked total up;
* a tenant's count ``n`` holding a non-integer was read as 0: its max_queue_size let
  jobs in until the count caught up. Its jobs are now refused naming the field and the
  repair, the scripts never write over it, and the tenant's copy
  (``TenantRegistry.sync()``, each worker every 30 s) recounts it from its jobs;
* a tenant whose running set was damaged: each finished job left the tenant's count up
  (its max_queue_size filled for good), and its jobs stayed in wait, examined by every
  claim, with a bare WRONGTYPE in slot-errors. The set is now skipped and recorded
  naming the key and the repair, the counts stay exact, its jobs wait in its lane (its
  timer tries again every 60 s) and other tenants' jobs run.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis

from helpers import QueueFactory, wait_until
from kitium_queue import JobQueue
from kitium_queue.errors import JobRefusedError
from kitium_queue.features.tenancy import TenantRegistry
from kitium_queue.features.tenancy import keys as tk
from test_parking import T0, Engine

pytestmark = pytest.mark.redis_only


async def _damage(client: aioredis.Redis, key: str) -> None:
    await client.delete(key)
    await client.set(key, "x")


async def _where(q: JobQueue, job_id: str) -> tuple[str | None, list[str]]:
    """A job's status field and the state sets it is in."""
    client = await q.client()
    st = await client.hget(q.keys.job(job_id), "st")
    sets = [
        s
        for s in ("wait", "active", "delayed", "completed", "dlq")
        if await client.zscore(getattr(q.keys, s), job_id) is not None
    ]
    return (st.decode() if st else None), sets


async def _recorded(q: JobQueue, key: str) -> str:
    client = await q.client()
    text = (await client.hget(q.keys.slot_errors, f"damaged:{key}")) or b""
    return text.decode()


# ------------------------------------------------------------------------- parking


@pytest.mark.parametrize("part", ["blocker", "index", "timers", "rules"])
async def test_claim_meeting_a_damaged_parking_key_fails_nothing(
    make_queue: QueueFactory, part: str
) -> None:
    q = make_queue("pclaim")
    q.set_concurrency_limit("k", 1)
    e = Engine(q)
    await e.add(T0, "w0", concurrency_key="k")
    await e.add(T0, "w1", concurrency_key="k")  # parked by claim: its cap is full
    await e.add(T0, "other")
    key = {
        "blocker": q.keys.parked("cc:k"),
        "index": q.keys.parked_index,
        "timers": q.keys.park_timers,
        "rules": q.keys.park_rules,
    }[part]
    client = await q.client()
    if part == "rules":  # read by a due timer
        await client.zadd(q.keys.park_timers, {"cc:k": T0 - 1})
    await _damage(client, key)
    status, _, got, _ = await e.claim(T0)
    assert status == "ok" and got == ["w0", "other"]
    assert await _where(q, "w0") == ("active", ["active"])
    st, sets = await _where(q, "w1")
    # Parked, or (its blocker damaged) still in wait: never in no set.
    assert (st, sets) in [("pending", []), ("waiting", ["wait"])]
    if part == "blocker":
        assert (st, sets) == ("waiting", ["wait"])
    text = await _recorded(q, key)
    assert "KQ_DAMAGED_KEY string" in text and key in text and "delete it" in text, text
    # Later calls go on alike.
    await e.add(T0, "other2")
    assert (await e.claim(T0 + 1))[2] == ["other2"]


@pytest.mark.parametrize("part", ["blocker", "index"])
async def test_enqueue_parking_behind_a_damaged_key_writes_no_orphan(
    make_queue: QueueFactory, part: str
) -> None:
    q = make_queue("penq")
    q.set_concurrency_limit("k", 1)
    e = Engine(q)
    await e.add(T0, "w0", concurrency_key="k")
    await e.claim(T0)
    key = q.keys.parked("cc:k") if part == "blocker" else q.keys.parked_index
    await _damage(await q.client(), key)
    reply = await e.run(
        "enqueue", T0, 86_400_000,
        "a1", "n", "{}", "", 0, 0, "0", "",
        "late", "n", "{}", '{"concurrency_key":"k"}', 0, 0, "0", "",
    )  # fmt: skip
    assert reply == [b"a1", b"new", b"late", b"new"]
    assert await _where(q, "a1") == ("waiting", ["wait"])
    st, sets = await _where(q, "late")
    if part == "blocker":
        assert (st, sets) == ("waiting", ["wait"])
    else:  # parked behind its (sound) blocker; the index is skipped
        assert st == "pending" and await blocker_members(q, "cc:k") == ["late"]
    assert key in await _recorded(q, key)


async def blocker_members(q: JobQueue, blocker: str) -> list[str]:
    client = await q.client()
    return [m.decode() for m in await client.zrange(q.keys.parked(blocker), 0, -1)]


async def test_a_damaged_slot_errors_hash_fails_no_finish(make_queue: QueueFactory) -> None:
    q = make_queue("pserr")
    q.set_concurrency_limit("k", 1)
    e = Engine(q)
    await e.add(T0, "w0", concurrency_key="k")
    _, _, _, token = await e.claim(T0)
    await e.add(T0, "w1", concurrency_key="k")
    client = await q.client()
    await _damage(client, q.keys.parked("cc:k"))  # the release fragment's unpark fails
    await _damage(client, q.keys.slot_errors)  # and its error cannot be recorded
    await e.complete(T0 + 1, "w0", token)
    assert await _where(q, "w0") == ("completed", ["completed"])


async def test_unpark_meeting_a_damaged_index_keeps_the_parked_total(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("ptotal")
    q.set_concurrency_limit("k", 1)
    e = Engine(q)
    await e.add(T0, "w0", concurrency_key="k")
    _, _, _, token = await e.claim(T0)
    await e.add(T0, "w1", concurrency_key="k")
    client = await q.client()
    assert await client.hget(q.keys.meta, "parked") == b"1"
    await _damage(client, q.keys.parked_index)
    await e.complete(T0 + 1, "w0", token)
    assert await _where(q, "w1") == ("waiting", ["wait"])
    assert await client.hget(q.keys.meta, "parked") is None
    assert q.keys.parked_index in await _recorded(q, q.keys.parked_index)


async def test_a_worker_keeps_running_jobs_past_a_damaged_blocker(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("pwork", worker={"concurrency": 4, "scheduler": False})
    q.set_concurrency_limit("k", 1)
    await _damage(await q.client(), q.keys.parked("cc:k"))
    done: list[str] = []

    async def run(job: Any) -> None:
        done.append(job.id)
        await asyncio.sleep(0.01)

    q.process("*", run)
    ids = [await q.add_job("j", {}, concurrency_key="k") for _ in range(3)]
    ids += [await q.add_job("j", {}) for _ in range(3)]
    await q.start()
    await wait_until(lambda: sorted(done) == sorted(ids), 15, message=lambda: f"ran {done}")
    assert len(done) == len(ids)  # each once


# ------------------------------------------------------------------------- tenancy


async def test_a_damaged_tenant_count_refuses_its_jobs_until_recounted(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q = make_queue("tcount")
    reg = TenantRegistry(q)
    await reg.create_tenant({"tenant_id": "a", "quota": {"max_queue_size": 3}})
    await reg.create_tenant({"tenant_id": "b", "quota": {"max_queue_size": 3}})
    first = [await q.add_job("x", {}, tenant_id="a") for _ in range(2)]
    key = tk.tenant(q.keys, "a")
    await redis_client.hset(key, "n", "garbage")
    with pytest.raises(JobRefusedError, match=r"field n of .* not a count") as info:
        await q.add_job("x", {}, tenant_id="a")
    assert "TenantRegistry.sync()" in str(info.value)
    await q.add_job("x", {}, tenant_id="b")  # another tenant is not concerned
    # A finished job leaves the damaged count as it is (0 would loosen the quota).
    await q.remove_job(first[0])
    assert await redis_client.hget(key, "n") == b"garbage"
    await reg.sync()
    assert await redis_client.hget(key, "n") == b"1"
    await q.add_job("x", {}, tenant_id="a")
    await q.add_job("x", {}, tenant_id="a")
    with pytest.raises(JobRefusedError, match="max_queue_size"):
        await q.add_job("x", {}, tenant_id="a")


async def test_a_damaged_running_set_keeps_the_counts_and_spares_other_tenants(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q = make_queue("trun")
    reg = TenantRegistry(q)
    await reg.create_tenant({"tenant_id": "free", "quota": {"max_queue_size": 5}})
    await reg.attach(q)
    e = Engine(q)
    await e.add(T0, "f1", tenant_id="free")
    run_key = tk.running(q.keys, "free")
    await _damage(redis_client, run_key)
    _, _, got, token = await e.claim(T0)
    assert got == ["f1"]
    await e.complete(T0 + 1, "f1", token)
    # Its count is back to 0: the finished job no longer holds a place in its quota.
    assert await redis_client.hget(tk.tenant(q.keys, "free"), "n") == b"0"
    text = await _recorded(q, run_key)
    assert run_key in text and "delete it" in text, text


async def test_a_capped_tenant_with_a_damaged_running_set_waits_in_its_lane(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q = make_queue("tlane")
    reg = TenantRegistry(q)
    await reg.create_tenant({"tenant_id": "capped", "quota": {"max_concurrency": 2}})
    await reg.create_tenant({"tenant_id": "other"})
    await reg.attach(q)
    e = Engine(q)
    run_key = tk.running(q.keys, "capped")
    await _damage(redis_client, run_key)
    await e.add(T0, "c1", tenant_id="capped")
    await e.add(T0, "c2", tenant_id="capped")
    await e.add(T0, "o1", tenant_id="other")
    _, _, got, token = await e.claim(T0)
    assert got == ["o1"]
    await e.complete(T0 + 1, "o1", token)
    # Out of wait, in the tenant's lane, with a timer to try again; reported.
    assert await redis_client.zcard(q.keys.wait) == 0
    assert sorted(await blocker_members(q, "t:capped")) == ["c1", "c2"]
    assert await redis_client.zscore(q.keys.park_timers, "t:capped") is not None
    assert run_key in await _recorded(q, run_key)
    # Repaired: the timer brings one back, whose start refills the rest.
    await redis_client.delete(run_key)
    _, _, got, _ = await e.claim(T0 + 60_001)
    assert got == ["c1"]
    assert (await e.claim(T0 + 60_002))[2] == ["c2"]


async def test_parked_job_reads_name_or_skip_a_damaged_parking_key(
    make_queue: QueueFactory,
) -> None:
    # Before: parked_ids / list_jobs(PENDING), parked_by_blocker and park_stats raised a
    # bare WRONGTYPE on a damaged index or blocker set.
    from kitium_queue import DamagedKeyError, JobStatus
    from kitium_queue.parking import park_stats, parked_by_blocker, parked_ids, slot_errors

    q = make_queue("pread")
    q.set_concurrency_limit("*", 1)
    e = Engine(q)
    for key in ("x", "y"):
        await e.add(T0, f"{key}-run", concurrency_key=key)
    assert len((await e.claim(T0))[2]) == 2
    for i in range(4):
        await e.add(T0, f"{'xy'[i % 2]}{i}", concurrency_key="xy"[i % 2])
    client = await q.client()
    (blocker_x,) = [b for b in await client.zrange(q.keys.parked_index, 0, -1) if b.endswith(b"x")]
    await _damage(client, q.keys.parked(blocker_x.decode()))
    # The damaged blocker's set lists nothing; the other's jobs are listed.
    assert await parked_ids(q) == ["y1", "y3"]
    page = await q.list_jobs(JobStatus.PENDING)
    assert [j.id for j in page.jobs] == ["y1", "y3"]
    await _damage(client, q.keys.parked_index)
    with pytest.raises(DamagedKeyError, match="parked"):
        await parked_by_blocker(q)
    with pytest.raises(DamagedKeyError):
        await parked_ids(q)
    await _damage(client, q.keys.slot_errors)
    with pytest.raises(DamagedKeyError, match="slot-errors"):
        await slot_errors(q)
    stats = await park_stats(q)
    assert stats.blockers == 0 and stats.top == []
    assert {f"damaged:{q.keys.parked_index}", f"damaged:{q.keys.slot_errors}"} <= set(
        stats.slot_errors
    )
