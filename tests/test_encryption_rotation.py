"""Key rotation (``EncryptionManager.rotate_key`` and the re-encryption pass).

Every kind of stored ciphertext moves to the new key (waiting, delayed, parked,
dead-lettered and completed jobs, results, schedules) while an active job is skipped
and finishes under the new key; the old key stays decrypt-only; a rotation under a
running load of 8,000 jobs loses none and leaves none on the old key, with the pass run
by the workers' leader-only service; a stale ``rotate_key`` changes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import ConfigurationError, JobQueue, JobStatus
from kitium_queue.features.encryption import EncryptionManager, KeyConfig, generate_key
from kitium_queue.features.groups import FIFOQueueManager

K1, K2, K3 = generate_key(), generate_key(), generate_key()


@pytest.fixture
async def rq(redis_url: str, prefix: str) -> AsyncIterator[QueueFactory]:
    factory = QueueFactory(redis_url, prefix)
    yield factory
    await factory.aclose()


async def stored_key_ids(client: aioredis.Redis, q: JobQueue) -> dict[str, int]:
    """How many stored job/schedule ciphertexts name each key id (whole queue)."""
    counts: dict[str, int] = {}
    async for key in client.scan_iter(match=f"{q.keys.base}*", count=1000):
        k = key.decode()
        if not (k.startswith(q.keys.base + "job:") or k.startswith(q.keys.base + "schedule:")):
            continue
        if (await client.type(key)) != b"hash":
            continue
        for field in (b"d", b"r"):
            raw = await client.hget(key, field)
            if not raw:
                continue
            try:
                env = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(env, dict) and "kqe" in env:
                counts[env["kid"]] = counts.get(env["kid"], 0) + 1
    return counts


async def test_rotation_reencrypts_every_state_and_skips_active_jobs(
    rq: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q = rq("rot", worker={"concurrency": 4})
    m = EncryptionManager(
        q,
        keys=[KeyConfig("k1", K1), KeyConfig("k2", K2, "aes-256-cbc")],
        rotation_grace_ms=0,
        run_rotation=False,
    )
    fifo = FIFOQueueManager(q)
    release = asyncio.Event()

    @q.process("slow")
    async def slow(job: Any) -> Any:
        await release.wait()
        return {"slow": job.data}

    @q.process("fail")
    async def fail(job: Any) -> Any:
        raise ValueError("no")

    @q.process("ok")
    async def ok(job: Any) -> Any:
        return {"ok": job.data}

    done = await q.add_job("ok", {"v": "completed"}, encrypted=True)
    failed = await q.add_job("fail", {"v": "failed"}, encrypted=True, attempts=1)
    active = await q.add_job("slow", {"v": "active"}, encrypted=True)
    await q.start(concurrency=4)
    await wait_for_status(q, done, JobStatus.COMPLETED)
    await wait_for_status(q, failed, JobStatus.DLQ)
    await wait_for_status(q, active, JobStatus.ACTIVE)
    await q.pause()
    waiting = await q.add_job("ok", {"v": "waiting"}, encrypted=True)
    delayed = await q.add_job("ok", {"v": "delayed"}, encrypted=True, delay=600_000)
    g1 = await q.add_job("ok", {"v": "g1"}, encrypted=True, message_group_id="acct")
    g2 = await q.add_job("ok", {"v": "g2"}, encrypted=True, message_group_id="acct")
    sched = await q.schedule_every(
        "ok", {"v": "sched"}, 3_600_000, encrypted=True, start_date=10**13
    )
    assert fifo is not None
    # 7 jobs' data, the schedule's data, one result.
    assert (await stored_key_ids(redis_client, q)) == {"k1": 9}

    status = await m.rotate_key("k1", "k2")
    assert status.state == "running" and status.to_key_id == "k2"
    with pytest.raises(ConfigurationError, match="current key is 'k2'"):
        await m.rotate_key("k1", "k2")
    new = await q.add_job("ok", {"v": "new"}, encrypted=True)  # already under k2
    runner = asyncio.create_task(m.run_rotation())
    # The pass cannot finish while the active job holds old-key data.
    await wait_until(lambda: m.rotation_status(), timeout=5)
    await asyncio.sleep(0.5)
    assert not runner.done()
    release.set()
    final = await asyncio.wait_for(runner, 30)
    assert final.state == "done" and final.reencrypted >= 10 and final.undecryptable == 0
    assert (await stored_key_ids(redis_client, q)) == {"k2": 11}  # + new data, + result
    for jid, value in (
        (waiting, "waiting"),
        (delayed, "delayed"),
        (g1, "g1"),
        (g2, "g2"),
        (failed, "failed"),
        (new, "new"),
    ):
        info = await q.get_job_status(jid)
        assert info is not None and info.data == {"v": value}
    for jid, value in ((done, "completed"), (active, "active")):
        info = await q.get_job_status(jid)
        assert info is not None and info.status is JobStatus.COMPLETED
        assert info.result in ({"ok": {"v": value}}, {"slow": {"v": value}})
    got = await q.get_schedule(sched.id)
    assert got is not None

    # A process holding only the new key runs everything stored.
    other = rq("rot", worker={"concurrency": 4})
    EncryptionManager(other, keys=[KeyConfig("k2", K2, "aes-256-cbc")], run_rotation=False)
    outs: list[Any] = []
    other.process("ok", lambda job: outs.append(job.data))
    await q.close()
    await other.resume()
    await other.start()
    await wait_for_status(other, waiting, JobStatus.COMPLETED)
    assert {"v": "waiting"} in outs


async def test_rotate_key_needs_both_keys_and_the_right_current(rq: QueueFactory) -> None:
    q = rq("rk")
    m = EncryptionManager(q, keys=[KeyConfig("k1", K1)], run_rotation=False)
    await m.initialize()
    with pytest.raises(ConfigurationError, match="not held"):
        await m.rotate_key("k1", "k2")
    await m.add_key(KeyConfig("k2", K2))
    await m.add_key(KeyConfig("k3", K3))
    with pytest.raises(ConfigurationError, match="current key is 'k1'"):
        await m.rotate_key("k3", "k2")
    with pytest.raises(ConfigurationError, match="already"):
        await m.rotate_key("k1", "k1")
    st = await m.rotate_key("k1", "k2")
    assert st.from_key_id == "k1" and st.current_key_id == "k2"
    assert st.key_ids == ["k1", "k2", "k3"]


async def test_rotation_under_a_running_load_of_8000_jobs(
    rq: QueueFactory, redis_client: aioredis.Redis
) -> None:
    total = 8_000
    keep = {"remove_on_complete": False}  # every finished job stays: all are checked
    q = rq("load", worker={"concurrency": 64}, default_job_options=keep)
    m = EncryptionManager(
        q,
        keys=[KeyConfig("k1", K1), KeyConfig("k2", K2)],
        encrypt_all=True,
        refresh_ms=200,
        rotation_grace_ms=600,
        rotation_batch=200,  # the pass still takes many batches (16,000 values)
    )
    seen: set[int] = set()

    @q.process("w")
    async def w(job: Any) -> Any:
        seen.add(job.data["i"])
        return job.data["i"]

    # A second process's producer, with its own key cache.
    producer = rq("load", default_job_options=keep)
    EncryptionManager(
        producer,
        keys=[KeyConfig("k1", K1), KeyConfig("k2", K2)],
        encrypt_all=True,
        refresh_ms=200,
        run_rotation=False,
    )
    ids: list[str] = []

    async def produce() -> None:
        for start in range(0, total, 500):
            ids.extend(
                await producer.add_jobs(
                    [("w", {"i": i, "pad": "x" * 200}) for i in range(start, start + 500)]
                )
            )
            await asyncio.sleep(0.01)

    prod = asyncio.create_task(produce())
    await wait_until(lambda: len(ids) >= total // 4, timeout=60)
    await q.start()
    await wait_until(lambda: len(seen) >= total // 8, timeout=60)
    await m.rotate_key("k1", "k2")  # mid-load: jobs waiting, running and done
    await prod
    await wait_until(
        lambda: len(seen) == total,
        timeout=240,
        interval=0.2,
        message=lambda: f"{len(seen)} of {total} ran",
    )
    st = await wait_until(lambda: _done(m), timeout=120, interval=0.2)
    assert st.undecryptable == 0 and st.reencrypted > 0
    assert len(set(ids)) == total and seen == set(range(total))
    counts = await stored_key_ids(redis_client, q)
    assert counts == {"k2": 2 * total}  # every job's data and result, on the new key


async def _done(m: EncryptionManager) -> Any:
    st = await m.rotation_status()
    return st if st.state == "done" else None


async def test_rotation_reencrypts_results_kept_under_idempotency_keys(
    rq: QueueFactory, redis_client: aioredis.Redis
) -> None:
    from kitium_queue import IdempotencyManager

    q = rq("rot-eo")
    m = EncryptionManager(
        q, keys=[KeyConfig("k1", K1), KeyConfig("k2", K2)], rotation_grace_ms=0, run_rotation=False
    )
    idem = IdempotencyManager(q)
    await m.initialize()
    q.process("pay")(lambda job: {"receipt": "SECRET-RECEIPT-" + job.data["o"]})
    jid = await q.add_job(
        "pay",
        {"o": "1"},
        encrypted=True,
        idempotency_key="o-1",
        delivery_guarantee="exactly-once",
        remove_on_complete=True,
    )
    await q.start()
    res = await wait_until(lambda: idem.get_result("o-1"), 5)
    assert res.result == {"receipt": "SECRET-RECEIPT-1"} and res.source == "stored"
    assert await q.get_job_status(jid) is None  # only the stored copy is left
    raw = await redis_client.hget(q.keys.extra("idem-r:o-1"), "r")
    assert raw is not None and b"SECRET-RECEIPT" not in raw
    assert orjson.loads(raw)["kid"] == "k1"
    await m.rotate_key("k1", "k2")
    await m.run_rotation()
    raw = await redis_client.hget(q.keys.extra("idem-r:o-1"), "r")
    assert raw is not None and orjson.loads(raw)["kid"] == "k2"
    again = await idem.get_result("o-1")
    assert again is not None and again.result == {"receipt": "SECRET-RECEIPT-1"}


async def test_passes_run_side_by_side_count_every_value_once(
    rq: QueueFactory, redis_client: aioredis.Redis
) -> None:
    """Two passes of one rotation at once (the leader's and a ``run_rotation`` by hand,
    in two processes): each value is re-encrypted once (compare-and-set), and the
    rotation's count is the sum of both passes' swaps, never one pass's count written
    over the other's."""
    keys = [KeyConfig("k1", K1), KeyConfig("k2", K2)]
    q1, q2 = rq("side"), rq("side")
    m1 = EncryptionManager(
        q1, keys=keys, run_rotation=False, rotation_grace_ms=0, rotation_batch=10
    )
    m2 = EncryptionManager(
        q2, keys=keys, run_rotation=False, rotation_grace_ms=0, rotation_batch=10
    )
    await m1.initialize()
    n = 300
    for i in range(n):
        await q1.add_job("pay", {"i": i}, encrypted=True)
    await m1.rotate_key("k1", "k2")
    a, b = await asyncio.gather(m1.run_rotation(), m2.run_rotation())
    assert a.state == b.state == "done"
    assert await stored_key_ids(redis_client, q1) == {"k2": n}
    assert (await m1.rotation_status()).reencrypted == n
