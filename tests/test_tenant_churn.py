"""Tenants created and removed continually (a SaaS whose customers come and go).

Before, a removed tenant stayed for good: a tombstone in the registry
(``<prefix>:{!access}:tenants``) and its copy ``tn:<tenant>`` in every registered queue,
even queues it never used (about 150-300 bytes each). A churn probe found every tenant
ever created still there, 126 of 134 of them removed. Now a removed tenant's copy in a
queue is retired once nothing of it is left there (no unfinished job, no running slot,
no ticket, an empty lane: ``tn_put.lua``) and expires ``TOMBSTONE_TTL_S`` later; the
registry's entry goes as soon as every queue has retired it. Checked here against a
real Redis, with the TTL shortened:

* after a churn of 60 tenants (4 jobs each, removed while their jobs still run), only
  the live tenants' keys are left, in the queue that ran the jobs and in one that never
  ran any, and the registry holds only the live tenants;
* a removed tenant's new jobs are refused as documented, with its tombstone and after it
  expired; a copy of the tenant read before the removal and landing late is refused
  either way (by the tombstone, then by its age);
* an id removed and created again starts clean (its old totals gone, no TTL left on it);
* a removed tenant's failed job run again after its keys went, or while its copy
  expires under it, leaves no key behind;
* tickets a process without tenancy left held by a removed tenant are healed, and its
  keys go;
* a worker SIGKILLed while a removed tenant's job runs: the job is recovered and run by
  another worker, its running slot released, and the tenant's keys still go.

``python tests/test_tenant_churn.py --worker URL PREFIX QUEUE TTL`` is the worker
process of the last case.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from helpers import all_completed, wait_until
from kitium_queue import JobQueue
from kitium_queue.errors import JobRefusedError, QuotaExceededError
from kitium_queue.features.tenancy import TenantConfig, TenantRegistry
from kitium_queue.features.tenancy import install as ti
from kitium_queue.features.tenancy import keys as tk
from kitium_queue.features.tenancy.install import StoredTenant, put_tenant

pytestmark = [pytest.mark.redis_only, pytest.mark.timeout(120)]

#: The tombstone TTL of these tests (seconds; TOMBSTONE_TTL_S is an hour).
TTL = 2.0
SYNC = 0.1


@pytest.fixture(autouse=True)
def short_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ti, "TOMBSTONE_TTL_S", TTL)


@pytest.fixture
async def reg(redis_url: str, prefix: str) -> AsyncIterator[TenantRegistry]:
    async with TenantRegistry(redis=redis_url, prefix=prefix) as r:
        yield r


@pytest.fixture
async def queues(redis_url: str, prefix: str) -> AsyncIterator[list[JobQueue]]:
    made: list[JobQueue] = []
    yield made
    for q in made:
        if q.worker is not None and q.worker.running:
            await q.worker.stop()
        await q.close()


def _queue(made: list[JobQueue], url: str, prefix: str, name: str, **kw: Any) -> JobQueue:
    q = JobQueue(name, redis=url, prefix=prefix, **kw)
    TenantRegistry.enable(q, sync_interval_s=SYNC)
    made.append(q)
    return q


async def _tenancy_keys(q: JobQueue) -> dict[str, int]:
    """Every tenancy key of ``q`` (copies, running sets, tickets, lanes) -> its PTTL."""
    client = await q.client()
    out: dict[str, int] = {}
    for pattern in (q.keys.extra("tn*"), q.keys.parked("t:*")):
        async for key in client.scan_iter(match=pattern, count=1000):
            name = key.decode()
            out[name[len(q.keys.base) :]] = await client.pttl(key)
    return out


async def _registry(reg: TenantRegistry) -> set[str]:
    client = await reg._get_client()
    return {k.decode() for k in await client.hkeys(tk.registry(reg.prefix))}


async def test_churn_leaves_only_live_tenants_and_tombstones_for_a_bounded_time(
    redis_url: str, prefix: str, reg: TenantRegistry, queues: list[JobQueue]
) -> None:
    q = _queue(queues, redis_url, prefix, "churn", worker={"concurrency": 6})
    idle = _queue(queues, redis_url, prefix, "idle")  # registered, never runs a job
    await reg.attach(q)
    await reg.attach(idle)
    done: list[str] = []

    @q.process("work")
    async def work(job: Any) -> None:
        await asyncio.sleep(0.005)
        done.append(job.id)

    await q.start()
    live: deque[str] = deque()
    removed: list[str] = []
    for i in range(60):
        tid = f"cust-{i}"
        await reg.create_tenant({"tenant_id": tid, "quota": {"max_concurrency": 1 + i % 3}})
        live.append(tid)
        await q.add_jobs([("work", {"i": k}, {"tenant_id": tid}) for k in range(4)])
        if len(live) > 3:
            gone = live.popleft()
            assert await reg.remove_tenant(gone) is True
            removed.append(gone)
    await wait_until(lambda: len(done) == 240, 30)
    want = {f"tn:{t}" for t in live}

    async def lasting() -> bool:
        # Within a few syncs nothing of a removed tenant is kept without a TTL (live
        # tenants' copies have none), and no TTL is above TOMBSTONE_TTL_S.
        for qq in (q, idle):
            keys = await _tenancy_keys(qq)
            assert all(ttl <= TTL * 1000 for ttl in keys.values()), keys
            if {k for k, ttl in keys.items() if ttl == -1} != want:
                return False
        return True

    await wait_until(lasting, SYNC * 30, interval=0.02, message="removed tenants retired")

    async def only_live() -> bool:
        return (
            await _tenancy_keys(q) == dict.fromkeys(want, -1)
            and await _tenancy_keys(idle) == dict.fromkeys(want, -1)
            and await _registry(reg) == set(live)
        )

    await wait_until(only_live, TTL * 2 + 10, interval=0.1, message="only live tenants left")
    for t in removed[-5:]:
        with pytest.raises(JobRefusedError, match="does not exist"):
            await q.add_job("work", tenant_id=t)
    assert {c.tenant_id for c in await reg.list_tenants()} == set(live)


async def test_a_removed_tenant_stays_refused_and_a_late_copy_never_brings_it_back(
    redis_url: str, prefix: str, reg: TenantRegistry, queues: list[JobQueue]
) -> None:
    q = _queue(queues, redis_url, prefix, "late")
    await reg.attach(q)
    client = await q.client()
    cfg = await reg.create_tenant({"tenant_id": "acme", "quota": {"max_queue_size": 5}})
    # A copy read before the removal (a sync of another process, paused), landing later.
    raw = await client.hget(tk.registry(prefix), "acme")
    old = StoredTenant.parse("acme", raw)
    assert old is not None and old.config == cfg
    secs, micros = await client.time()
    read_at = secs * 1000 + micros // 1000
    assert await reg.remove_tenant("acme") is True
    key = tk.tenant(q.keys, "acme")
    # Nothing of it was left: its copy is retired at once, the registry's entry dropped.
    assert 0 < await client.pttl(key) <= TTL * 1000
    assert await client.hget(tk.registry(prefix), "acme") is None
    old.read_at = read_at
    with pytest.raises(JobRefusedError, match="tenant 'acme' does not exist in queue 'late'"):
        await q.add_job("x", tenant_id="acme")
    assert await put_tenant(client, q.keys, old) is False  # the tombstone is newer
    with pytest.raises(JobRefusedError, match="does not exist"):
        await q.add_job("x", tenant_id="acme")

    async def gone() -> bool:
        return await client.exists(key) == 0

    await wait_until(gone, TTL + 5, interval=0.05)
    # Its tombstone expired: the late copy is refused by its age (read > TTL ago).
    assert await put_tenant(client, q.keys, old) is False
    assert await client.exists(key) == 0
    with pytest.raises(JobRefusedError, match="does not exist"):
        await q.add_job("x", tenant_id="acme")
    assert await reg.sync() == 0
    assert await client.exists(key) == 0 and await reg.get_tenant("acme") is None


async def test_an_id_created_again_starts_clean(
    redis_url: str, prefix: str, reg: TenantRegistry, queues: list[JobQueue]
) -> None:
    q = _queue(queues, redis_url, prefix, "again", worker={"concurrency": 2})
    await reg.attach(q)
    client = await q.client()
    seen: list[str] = []

    @q.process("x")
    async def x(job: Any) -> None:
        seen.append(job.id)

    await reg.create_tenant({"tenant_id": "acme", "quota": {"max_queue_size": 10}})
    first = await q.add_jobs([("x", {}, {"tenant_id": "acme"}) for _ in range(3)])
    await q.start()
    await wait_until(lambda: len(seen) == 3, 10)
    # A processor's return is recorded a moment later (the worker's outcome batch): the
    # tenant's totals are read once the jobs are recorded as completed.
    await wait_until(lambda: all_completed(q, first), 10)
    assert (await reg.get_tenant_usage("acme")).completed == 3
    await reg.remove_tenant("acme")
    # Created again while its tombstone is there: its old totals and TTL go.
    await reg.create_tenant({"tenant_id": "acme", "quota": {"max_queue_size": 2}})
    key = tk.tenant(q.keys, "acme")
    assert await client.pttl(key) == -1
    usage = await reg.get_tenant_usage("acme")
    assert (usage.completed, usage.queued, usage.active) == (0, 0, 0)
    await q.worker.stop()
    await q.add_jobs([("x", {}, {"tenant_id": "acme"}) for _ in range(2)])
    with pytest.raises(QuotaExceededError):
        await q.add_job("x", tenant_id="acme")
    await q.start()
    await wait_until(lambda: len(seen) == 5, 10)
    # Removed again and its keys gone: created again from nothing.
    await reg.remove_tenant("acme")

    async def gone() -> bool:
        return await client.exists(key) == 0 and not await _registry(reg)

    await wait_until(gone, TTL + 5, interval=0.05)
    await reg.create_tenant(TenantConfig("acme"))
    assert await client.pttl(key) == -1
    last = await q.add_job("x", tenant_id="acme")
    await wait_until(lambda: len(seen) == 6, 10)
    await wait_until(lambda: all_completed(q, [last]), 10)
    usage = await reg.get_tenant_usage("acme")
    assert (usage.completed, usage.queued) == (1, 0)


async def test_a_removed_tenants_job_run_again_after_its_keys_went_leaves_none(
    redis_url: str, prefix: str, reg: TenantRegistry, queues: list[JobQueue]
) -> None:
    q = _queue(queues, redis_url, prefix, "replay", worker={"concurrency": 2})
    await reg.attach(q)
    client = await q.client()
    runs: list[str] = []

    @q.process("x")
    async def x(job: Any) -> None:
        runs.append(job.id)
        if len(runs) == 1:
            raise RuntimeError("first run fails")

    await reg.create_tenant({"tenant_id": "acme", "quota": {"max_concurrency": 1}})
    jid = await q.add_job("x", tenant_id="acme", attempts=1)
    await q.start()
    await wait_until(lambda: len(runs) == 1, 10)

    async def failed() -> bool:
        info = await q.get_job_status(jid)
        return info is not None and info.status.value in ("failed", "dlq")

    await wait_until(failed, 10)
    await reg.remove_tenant("acme")

    async def gone() -> bool:
        return not await _tenancy_keys(q)

    await wait_until(gone, TTL + 5, interval=0.05)
    await q.retry_job(jid)  # an operator's action: its tenant's quota is not asked
    await wait_until(lambda: len(runs) == 2, 10)

    async def completed() -> bool:
        info = await q.get_job_status(jid)
        return info is not None and info.status.value == "completed"

    await wait_until(completed, 10)
    await asyncio.sleep(SYNC * 5)
    assert await _tenancy_keys(q) == {}
    assert await client.hget(q.keys.job(jid), "tq") is None


async def test_a_copy_expiring_under_a_running_job_is_not_written_again(
    redis_url: str, prefix: str, reg: TenantRegistry, queues: list[JobQueue]
) -> None:
    """A removed tenant's failed job run again while its retired copy still counts down:
    the run is counted in the copy, which expires under it; its end writes nothing."""
    q = _queue(queues, redis_url, prefix, "expiring", worker={"concurrency": 2})
    await reg.attach(q)
    client = await q.client()
    key = tk.tenant(q.keys, "acme")
    runs: list[str] = []

    @q.process("x")
    async def x(job: Any) -> None:
        runs.append(job.id)
        if len(runs) == 1:
            raise RuntimeError("first run fails")
        while await client.exists(key):  # the copy expires while this runs
            await asyncio.sleep(0.02)

    await reg.create_tenant({"tenant_id": "acme"})
    jid = await q.add_job("x", tenant_id="acme", attempts=1)
    await q.start()

    async def failed() -> bool:
        info = await q.get_job_status(jid)
        return info is not None and info.status.value in ("failed", "dlq")

    await wait_until(failed, 10)
    await reg.remove_tenant("acme")
    assert await client.pttl(key) > 0  # nothing left: retired at once
    await q.retry_job(jid)
    await wait_until(lambda: len(runs) == 2, 10)
    assert await client.hget(q.keys.job(jid), "tq") == b"1"  # counted in the copy

    async def completed() -> bool:
        info = await q.get_job_status(jid)
        return info is not None and info.status.value == "completed"

    await wait_until(completed, TTL + 10)
    await asyncio.sleep(SYNC * 5)
    assert await _tenancy_keys(q) == {}


async def test_tickets_a_process_without_tenancy_left_held_are_healed_and_keys_go(
    redis_url: str, prefix: str, reg: TenantRegistry, queues: list[JobQueue]
) -> None:
    q = _queue(queues, redis_url, prefix, "strand")
    await reg.attach(q)
    await reg.create_tenant({"tenant_id": "acme", "quota": {"max_concurrency": 2}})
    await q.add_jobs([("n", {"i": i}, {"tenant_id": "acme"}) for i in range(2)])
    plain = JobQueue("strand", redis=redis_url, prefix=prefix, worker={"concurrency": 2})
    queues.append(plain)
    done: list[str] = []

    @plain.process("n")
    async def n(job: Any) -> None:
        done.append(job.id)

    await plain.start()  # no tenancy: the two tickets stay held
    await wait_until(lambda: len(done) == 2, 10)
    await plain.worker.stop()
    await reg.remove_tenant("acme")
    keys = await _tenancy_keys(q)
    assert keys.get("tn-tk:acme") == -1 and keys.get("tn:acme") == -1, keys
    # A tenancy worker's sync gives the tickets back and retires the copy.
    runner = _queue(queues, redis_url, prefix, "strand", worker={"concurrency": 1})
    runner.process("n", n)
    await runner.start()

    async def gone() -> bool:
        return await _tenancy_keys(q) == {} and not await _registry(reg)

    await wait_until(gone, TTL + 10, interval=0.05)


# ---------------------------------------------------------------------------- chaos
async def test_a_worker_sigkilled_while_a_removed_tenants_job_runs(
    redis_url: str, prefix: str, reg: TenantRegistry, queues: list[JobQueue], tmp_path: Path
) -> None:
    settings = {"lock_duration": 1000, "max_stalled_interval": 200}
    q = _queue(queues, redis_url, prefix, "crash", settings=settings)
    await reg.attach(q)
    client = await q.client()
    await reg.create_tenant({"tenant_id": "acme", "quota": {"max_concurrency": 1}})
    ids = await q.add_jobs([("x", {"i": i}, {"tenant_id": "acme"}) for i in range(3)])
    err = tmp_path / "worker.err"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--worker",
        redis_url,
        prefix,
        "crash",
        str(TTL),
        stdout=asyncio.subprocess.PIPE,
        stderr=err.open("wb"),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line.strip() == b"ready", (line, err.read_text()[-2000:])
        started = f"{prefix}:started"
        await wait_until(lambda: client.llen(started), 10)
        assert await client.scard(tk.running(q.keys, "acme")) == 1
        assert await reg.remove_tenant("acme") is True
        # Its job runs and two wait: its copy stays (no TTL), and so does the registry's.
        assert await client.pttl(tk.tenant(q.keys, "acme")) == -1
        assert await _registry(reg) == {"acme"}
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    ran: list[str] = []

    @q.process("x")
    async def x(job: Any) -> None:
        ran.append(job.id)

    await q.start(concurrency=2)

    async def all_done() -> bool:
        for jid in ids:
            info = await q.get_job_status(jid)
            if info is None or info.status.value != "completed":
                return False
        return True

    await wait_until(all_done, 20, interval=0.05)
    assert sorted(ran) == sorted(ids)  # the killed run recovered and run again here

    async def gone() -> bool:
        return await _tenancy_keys(q) == {} and not await _registry(reg)

    await wait_until(gone, TTL + 10, interval=0.05, message="the removed tenant's keys go")


def _worker_main(url: str, prefix: str, name: str, ttl: str) -> None:
    """A tenancy worker whose jobs block (recording their start), until SIGKILLed."""
    ti.TOMBSTONE_TTL_S = float(ttl)

    async def run() -> None:
        import redis.asyncio as aioredis

        q = JobQueue(
            name,
            redis=url,
            prefix=prefix,
            worker={"concurrency": 1},
            settings={"lock_duration": 1000, "max_stalled_interval": 200},
        )
        TenantRegistry.enable(q, sync_interval_s=SYNC)
        rec = aioredis.Redis.from_url(url)

        @q.process("x")
        async def x(job: Any) -> None:
            await rec.rpush(f"{prefix}:started", job.id)
            await asyncio.sleep(3600)

        await q.start()
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    _worker_main(*sys.argv[2:6])
