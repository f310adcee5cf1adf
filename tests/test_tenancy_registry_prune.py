"""The registry's set of queues holds the queues tenancy is enabled on that are still
there (``features/tenancy/roster.py``).

A queue whose keys were deleted (``DEL <prefix>:{<queue>}:*``, how a queue is done
away with: ``clear()`` keeps its registration, its tenants' quotas and its counters)
stayed in ``<prefix>:{!access}:tenants:queues`` for good: every usage read went on
reading it (a row of zeros in ``get_tenant_usage``), and every tenant change copied the
tenant back into it, recreating its ``tn:<t>`` and ``tenants`` keys. Now the registry's
readers take it out and touch none of its keys again; a queue with jobs is never taken
out, and a queue registering while a reader takes it out stays registered.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio

from helpers import QueueFactory
from kitium_queue import JobQueue
from kitium_queue.features.tenancy import TenantRegistry
from kitium_queue.features.tenancy import install as tn_install
from kitium_queue.features.tenancy import keys as tk

pytestmark = [pytest.mark.redis_only]


async def _keys(client: redis.asyncio.Redis, q: JobQueue) -> list[bytes]:
    return [k async for k in client.scan_iter(match=q.keys.base + "*", count=1000)]


async def _obliterate(client: redis.asyncio.Redis, q: JobQueue, keep: tuple[str, ...] = ()) -> int:
    """Delete the queue's keys (all but those whose name after the queue's prefix is in
    ``keep``, or a job record when ``"job:*"`` is); how many went."""
    doomed = []
    for key in await _keys(client, q):
        part = key.decode()[len(q.keys.base) :]
        if part in keep or ("job:*" in keep and part.startswith("job:")):
            continue
        doomed.append(key)
    if doomed:
        await client.delete(*doomed)
    return len(doomed)


async def _registered(client: redis.asyncio.Redis, prefix: str) -> set[str]:
    return {m.decode() for m in await client.smembers(tk.registry_queues(prefix))}


@contextlib.asynccontextmanager
async def _commands(url: str) -> AsyncIterator[list[str]]:
    """Every command the server runs inside the block (MONITOR: scripts' own too)."""
    client = redis.asyncio.Redis.from_url(url)
    seen: list[str] = []
    end = f"end-{uuid.uuid4().hex}"
    try:
        async with client.monitor() as mon:

            async def collect() -> None:
                while True:
                    command = str((await mon.next_command())["command"])
                    if end in command:
                        return
                    seen.append(command)

            task = asyncio.ensure_future(collect())
            try:
                yield seen
            finally:
                await client.echo(end)
                await asyncio.wait_for(task, 10)
    finally:
        await client.aclose()


async def _two_queues(make_queue: QueueFactory) -> tuple[JobQueue, JobQueue, TenantRegistry]:
    kept, gone = make_queue("kept"), make_queue("gone")
    for q in (kept, gone):
        TenantRegistry.enable(q)
    reg = TenantRegistry.for_queue(kept)
    await reg.create_tenant({"tenant_id": "t", "quota": {"max_queue_size": 100}})
    for q in (kept, gone):
        await q.add_job("x", {}, tenant_id="t")  # the first tenant job registers the queue
    return kept, gone, reg


async def test_a_deleted_queue_leaves_the_set_and_is_read_and_written_no_more(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis, redis_url: str, prefix: str
) -> None:
    kept, gone, reg = await _two_queues(make_queue)
    assert await _registered(redis_client, prefix) == {"kept", "gone"}
    assert await _obliterate(redis_client, gone) > 0

    # The first read finds it gone: it leaves the set, and the usage is the other's.
    usage = await reg.get_tenant_usage("t")
    assert list(usage.queues) == ["kept"] and usage.queued == 1
    assert await _registered(redis_client, prefix) == {"kept"}
    assert await reg.queues() == ["kept"]

    # From then on no read and no change names one of its keys, nor writes one back.
    async with _commands(redis_url) as seen:
        assert list((await reg.get_tenant_usage("t")).queues) == ["kept"]
        assert await reg.queues() == ["kept"]
        await reg.create_tenant({"tenant_id": "u", "quota": {"max_queue_size": 1}})
        await reg.update_tenant("t", weight=2)
        await reg.remove_tenant("u")
        await reg.sync()
    assert seen, "MONITOR saw nothing"
    assert any(kept.keys.base in c for c in seen)
    touched = [c for c in seen if gone.keys.base in c]
    assert not touched, touched[:5]
    assert await _keys(redis_client, gone) == []
    assert float(await redis_client.hget(tk.tenant(kept.keys, "t"), "w")) == 2


async def test_a_change_after_the_deletion_writes_nothing_back(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis, prefix: str
) -> None:
    kept, gone, reg = await _two_queues(make_queue)
    await _obliterate(redis_client, gone)
    # No read came first: the change's own copies find the queue gone.
    await reg.create_tenant({"tenant_id": "u"})
    assert await _keys(redis_client, gone) == []
    assert await _registered(redis_client, prefix) == {"kept"}
    assert await redis_client.hget(tk.tenant(kept.keys, "u"), "on") == b"1"


async def test_a_queue_deleted_after_the_check_gets_no_copy(
    make_queue: QueueFactory,
    redis_client: redis.asyncio.Redis,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The check and the copy are two calls: the copy itself checks again, atomically."""
    kept, gone, reg = await _two_queues(make_queue)
    checked_before = getattr(tn_install, "live_queues", None)

    async def then_deleted(client: Any, pfx: str, names: Any) -> list[str]:
        assert checked_before is not None
        found: list[str] = await checked_before(client, pfx, names)
        await _obliterate(redis_client, gone)
        return found

    monkeypatch.setattr(tn_install, "live_queues", then_deleted, raising=False)
    await reg.update_tenant("t", weight=3)
    assert await _keys(redis_client, gone) == []
    assert await _registered(redis_client, prefix) == {"kept"}
    assert float(await redis_client.hget(tk.tenant(kept.keys, "t"), "w")) == 3


async def test_a_queue_with_jobs_or_only_cleared_stays(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis, prefix: str
) -> None:
    names = ("waiting", "delayed", "parked", "cleared", "gone")
    qs = {n: make_queue(n) for n in names}
    for q in qs.values():
        TenantRegistry.enable(q, quantum=1)
    reg = TenantRegistry.for_queue(qs["waiting"])
    await reg.create_tenant({"tenant_id": "t"})
    await qs["waiting"].add_job("x", {}, tenant_id="t")
    await qs["delayed"].add_job("x", {}, tenant_id="t", delay=600_000)
    await qs["parked"].add_jobs([("x", {}, {"tenant_id": "t"}) for _ in range(3)])
    await qs["cleared"].add_job("x", {}, tenant_id="t")
    await qs["cleared"].clear()
    await qs["gone"].add_job("x", {}, tenant_id="t")
    assert await _registered(redis_client, prefix) == set(names)
    # All that is left of each: its jobs where they wait (counters, tenancy keys,
    # registration, meta and events deleted by hand).
    assert await _obliterate(redis_client, qs["waiting"], ("wait", "job:*"))
    assert await _obliterate(redis_client, qs["delayed"], ("delayed", "job:*"))
    assert await redis_client.zcard(tk.lane(qs["parked"].keys, "t")) == 2
    assert await _obliterate(redis_client, qs["parked"], ("parked", "parked:t:t", "job:*"))
    assert await _obliterate(redis_client, qs["gone"])

    await reg.sync()
    usage = await reg.get_tenant_usage("t")
    assert sorted(usage.queues) == ["cleared", "delayed", "parked", "waiting"]
    assert await reg.queues() == ["cleared", "delayed", "parked", "waiting"]
    assert await _registered(redis_client, prefix) == set(names) - {"gone"}
    # The cleared queue still gets every change.
    await reg.update_tenant("t", quota={"max_queue_size": 7})
    assert await redis_client.hget(tk.tenant(qs["cleared"].keys, "t"), "mqs") == b"7"
    assert await _keys(redis_client, qs["gone"]) == []


async def test_a_queue_registering_again_is_never_lost(
    make_queue: QueueFactory,
    redis_client: redis.asyncio.Redis,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kept, gone, reg = await _two_queues(make_queue)
    await _obliterate(redis_client, gone)

    # A process enables tenancy on it and adds a job right after a reader found it gone,
    # before that reader takes it out of the set (the registration's own add finds it
    # still there).
    again = make_queue("gone")
    TenantRegistry.enable(again)
    client = await kept.client()
    srem = client.srem
    raced: list[str] = []

    async def registered_first(key: str, *members: Any) -> Any:
        if not raced:
            raced.append(await again.add_job("x", {}, tenant_id="t"))
        return await srem(key, *members)

    monkeypatch.setattr(client, "srem", registered_first)
    assert await reg.queues() == ["gone", "kept"]
    assert raced, "no reader took the queue out"
    monkeypatch.undo()
    assert await _registered(redis_client, prefix) == {"kept", "gone"}
    await reg.update_tenant("t", weight=4)
    assert float(await redis_client.hget(tk.tenant(again.keys, "t"), "w")) == 4
    assert (await reg.get_tenant_usage("t")).queues["gone"].queued == 1

    # Taken out once gone, it comes back with its next registration.
    await _obliterate(redis_client, gone)
    assert await reg.queues() == ["kept"]
    await reg.attach(again)
    assert await _registered(redis_client, prefix) == {"kept", "gone"}

    # Readers and registrations at once, in every order: the queue stays registered.
    for i in range(30):
        await _obliterate(redis_client, gone)

        async def register(delay: float) -> None:
            await asyncio.sleep(delay)
            await reg.attach(again)

        await asyncio.gather(reg.queues(), register((i % 6) * 0.0005), reg.queues())
        assert "gone" in await _registered(redis_client, prefix), i


async def test_a_registered_queue_with_nothing_in_it_yet_stays(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis, prefix: str
) -> None:
    """An administrator's ``attach`` before any tenant or job (docs/tenancy.md, Redis
    ACL) leaves no key but the queue's registration: that is enough to stay."""
    fresh, gone = make_queue("fresh"), make_queue("gone")
    reg = TenantRegistry.for_queue(fresh)
    await reg.attach(fresh)
    await reg.attach(gone)
    await _obliterate(redis_client, gone)
    assert await _keys(redis_client, fresh) == [tk.registered(fresh.keys).encode()]
    assert await reg.queues() == ["fresh"]
    await reg.create_tenant({"tenant_id": "t", "quota": {"max_queue_size": 3}})
    assert await redis_client.hget(tk.tenant(fresh.keys, "t"), "mqs") == b"3"
    assert await _registered(redis_client, prefix) == {"fresh"}
