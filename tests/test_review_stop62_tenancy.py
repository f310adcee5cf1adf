"""Multi-tenancy as a new user meets it, against a real Redis:

1. an update that changes nothing (``acm.update_tenant("gone")`` with no fields, or
   the values the tenant has) wrote a ``tenant.update`` audit entry identical to the
   last one and took a new version: now it writes nothing (no version, no entry), on
   the manager and on the ``TenantRegistry``;
2. the look-alike error of a tenant id said "digits and - _ . : @ go with any script"
   (``@`` is refused in tenant ids, ``# / +`` are allowed) and "one other script but
   Cyrillic or Greek": it now lists the separators of the kind of name checked (a
   tenant id's, a principal's) and says "except";
4. the usage of a tenant nobody created read as zeros (an idle tenant), while its
   quota was ``TenantNotFoundError``: now ``TenantNotFoundError`` too, with the closest
   id, on the registry and the manager; a removed tenant's leftovers (jobs still to
   run, totals until its keys go) are still read;
5. a tenant name took U+202E and U+200B (principal names refuse them), and its error
   said "non-empty" while '' is the default: format characters are refused in new
   names (one stored before is still read), and the text says what is accepted.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from helpers import all_completed, wait_until
from kitium_queue import AccessControlManager, ConfigurationError, JobQueue
from kitium_queue.errors import TenantNotFoundError
from kitium_queue.features.tenancy import TenantConfig, TenantRegistry
from kitium_queue.features.tenancy import keys as tk
from kitium_queue.identity import check_principal

KEY = secrets.token_hex(32)
ROOT = "platform-admin"


@pytest.fixture
async def acm(redis_url: str, prefix: str) -> AsyncIterator[AccessControlManager]:
    manager = AccessControlManager(redis_url, prefix=prefix, audit_key=KEY, principal=ROOT)
    await manager.grant_access(principal_id=ROOT, queue_pattern="*", role="admin")
    yield manager
    await manager.close()


@pytest.fixture
async def queue(redis_url: str, prefix: str) -> AsyncIterator[JobQueue]:
    q = JobQueue("tn62", redis=redis_url, prefix=prefix, worker={"concurrency": 4})
    yield q
    await q.close()


async def _updates(acm: AccessControlManager) -> list[Any]:
    await acm.audit.flush()
    return await acm.query_audit_log(action="tenant.update", newest_first=False)


# ------------------------------------------------------------------ 1. empty updates
async def test_an_update_that_changes_nothing_writes_nothing(
    acm: AccessControlManager,
    redis_client: aioredis.Redis,
    redis_url: str,
    prefix: str,
    queue: JobQueue,
) -> None:
    acm.tenants.enable(queue)
    await acm.tenants.attach(queue)
    await acm.create_tenant(
        {"tenant_id": "gone", "name": "Gone Ltd", "weight": 2, "quota": {"max_queue_size": 5}}
    )
    await acm.update_tenant("gone", weight=3)
    assert len(await _updates(acm)) == 1
    entry = await redis_client.hget(tk.registry(prefix), "gone")
    version = await redis_client.get(tk.registry_version(prefix))
    copy = await redis_client.hget(tk.tenant(queue.keys, "gone"), "v")
    for changes, fields in (
        (None, {}),
        (None, {"weight": 3}),
        ({"quota": {"max_queue_size": 5}, "name": "Gone Ltd"}, {}),
        (await acm.get_tenant("gone"), {}),
    ):
        same = await acm.update_tenant("gone", changes, **fields)
        assert same == await acm.get_tenant("gone")
        same = await acm.tenants.update_tenant("gone", changes, **fields)
        assert same.weight == 3.0
    # No version taken, no entry, no copy: the registry is as it was, byte for byte.
    assert len(await _updates(acm)) == 1
    assert await redis_client.hget(tk.registry(prefix), "gone") == entry
    assert await redis_client.get(tk.registry_version(prefix)) == version
    assert await redis_client.hget(tk.tenant(queue.keys, "gone"), "v") == copy
    # A plain registry (no access control) writes nothing either.
    async with TenantRegistry(redis=redis_url, prefix=prefix) as reg:
        await reg.update_tenant("gone", {"quota": {"max_concurrency": None}})
    assert await redis_client.hget(tk.registry(prefix), "gone") == entry
    # A tenant that does not exist is still an error, and a real change still writes.
    with pytest.raises(TenantNotFoundError):
        await acm.update_tenant("nobody")
    await acm.update_tenant("gone", weight=4)
    assert [e.metadata["weight"] for e in await _updates(acm)] == [3.0, 4.0]
    assert (await acm.verify_audit_log()).ok


# ------------------------------------------------------------------ 2. look-alike text
async def test_the_lookalike_error_lists_the_separators_of_the_name_checked(
    acm: AccessControlManager, redis_url: str, prefix: str
) -> None:
    async with TenantRegistry(redis=redis_url, prefix=prefix) as reg:
        for create in (reg.create_tenant, acm.create_tenant):
            with pytest.raises(ConfigurationError) as got:
                await create({"tenant_id": "\u0430cme"})
            text = str(got.value)
            assert "digits and - _ . : # / + go with any script" in text, text
            assert "@" not in text and "but Cyrillic" not in text
            assert "except Cyrillic and Greek" in text
        assert await reg.list_tenants() == []
    with pytest.raises(ConfigurationError) as got:
        await acm.grant_access(principal_id="\u0430dmin", queue_pattern="*", role="viewer")
    text = str(got.value)
    assert "digits, spaces, punctuation and symbols go with any script" in text, text
    assert "except Cyrillic and Greek" in text and "# / +" not in text
    with pytest.raises(ConfigurationError, match="except Cyrillic and Greek"):
        check_principal("p\u0430ypal")


# ------------------------------------------------------------------ 4. unknown usage
async def test_the_usage_of_an_unknown_tenant_is_not_found(
    acm: AccessControlManager, queue: JobQueue
) -> None:
    acm.tenants.enable(queue)
    await acm.tenants.attach(queue)
    await acm.create_tenant({"tenant_id": "acme"})
    for reg in (acm, acm.tenants):
        with pytest.raises(TenantNotFoundError) as got:
            await reg.get_tenant_usage("acmee")
        assert "no tenant 'acmee' (did you mean 'acme'?)" in str(got.value)
        with pytest.raises(TenantNotFoundError):
            await reg.get_tenant_usage("nope", queues=[queue.name])
        with pytest.raises(TenantNotFoundError):  # as its quota is
            await reg.get_tenant_quota("nope")
        # A tenant that exists and was never used reads as zeros.
        usage = await reg.get_tenant_usage("acme")
        assert usage.empty and list(usage.queues) == [queue.name]


async def test_a_removed_tenants_leftovers_are_still_read(
    acm: AccessControlManager, queue: JobQueue, redis_client: aioredis.Redis, prefix: str
) -> None:
    acm.tenants.enable(queue)
    await acm.tenants.attach(queue)
    await acm.create_tenant({"tenant_id": "busy"})
    await acm.create_tenant({"tenant_id": "done"})
    # "busy" is removed with jobs still to run: its tombstone stays, its usage is read.
    await queue.add_jobs([("n", {}, {"tenant_id": "busy"}) for _ in range(3)])
    assert await acm.remove_tenant("busy")
    assert await acm.get_tenant("busy") is None
    assert (await acm.get_tenant_usage("busy")).queued == 3
    # "done" ran its jobs, then was removed with nothing left: its registry entry goes at
    # once, while its totals stay in the queue until its keys go; they are still read.
    ran: list[str] = []

    @queue.process("d")
    async def d(job: Any) -> None:
        ran.append(job.id)

    ids = await queue.add_jobs([("d", {}, {"tenant_id": "done"}) for _ in range(2)])
    await queue.start()
    await wait_until(lambda: all_completed(queue, ids), 10)
    await queue.worker.stop()
    assert await acm.remove_tenant("done")
    assert await redis_client.hget(tk.registry(prefix), "done") is None
    usage = await acm.get_tenant_usage("done")
    assert (usage.completed, usage.queued) == (2, 0)
    # Once its keys are gone, nothing of it is left: not found.
    await redis_client.delete(tk.tenant(queue.keys, "done"))
    with pytest.raises(TenantNotFoundError):
        await acm.get_tenant_usage("done")


# ------------------------------------------------------------------ 5. tenant names
@pytest.mark.parametrize("name", ["ACME \u202eCorp", "acme\u200b", "a\u2060b", "a\x85b"])
async def test_a_tenant_name_keeps_the_character_rules_of_principal_names(
    acm: AccessControlManager, redis_url: str, prefix: str, name: str
) -> None:
    async with TenantRegistry(redis=redis_url, prefix=prefix) as reg:
        for create in (reg.create_tenant, acm.create_tenant):
            with pytest.raises(ConfigurationError, match="format character") as got:
                await create({"tenant_id": "acme", "name": name})
            assert "non-empty" not in str(got.value) and "('' for none)" in str(got.value)
        assert await reg.list_tenants() == []
        await reg.create_tenant({"tenant_id": "acme", "name": "ACME"})
        for update in (reg.update_tenant, acm.update_tenant):
            with pytest.raises(ConfigurationError, match="format character"):
                await update("acme", name=name)
        assert (await reg.get_tenant("acme")) == TenantConfig("acme", name="ACME")
        assert (await reg.update_tenant("acme", name="")).name == ""


async def test_a_tenant_name_stored_before_the_rule_is_still_read(
    acm: AccessControlManager, redis_client: aioredis.Redis, prefix: str
) -> None:
    # Written as an earlier release wrote it: the tenant stays readable and changeable.
    body = {"tenant_id": "old", "name": "Old \u202eCorp", "version": 1, "weight": 1.0}
    await redis_client.hset(tk.registry(prefix), "old", orjson.dumps(body))
    assert (await acm.get_tenant("old")) == TenantConfig("old", name="Old \u202eCorp")
    assert (await acm.update_tenant("old", weight=2)).name == "Old \u202eCorp"
    assert (await acm.update_tenant("old", name="Old Corp")).name == "Old Corp"


def test_the_tenant_name_error_says_what_is_accepted() -> None:
    assert TenantConfig("t").name == ""
    for bad in (7, "x" * 257, "a\nb"):
        with pytest.raises(ConfigurationError) as got:
            TenantConfig("t", name=bad)  # type: ignore[arg-type]
        text = str(got.value)
        assert "non-empty" not in text and "('' for none)" in text, text


async def test_quota_and_unknown_tenant_refusals_point_at_the_checked_path(
    redis_url: str, prefix: str
) -> None:
    # The advice named TenantRegistry.create_tenant / update_tenant only, which bypass
    # access control and its audit where those are on.
    from kitium_queue import JobQueue
    from kitium_queue.errors import QuotaExceededError
    from kitium_queue.features.tenancy import TenantRegistry

    q = JobQueue("adv", redis=redis_url, prefix=prefix)
    try:
        reg = TenantRegistry(q)
        await reg.create_tenant({"tenant_id": "t1", "quota": {"max_queue_size": 1}})
        await q.add_job("n", {}, {"tenant_id": "t1"})
        with pytest.raises(QuotaExceededError) as err:
            await q.add_job("n", {}, {"tenant_id": "t1"})
        assert "update_tenant on the AccessControlManager where access control is on" in str(
            err.value
        )
        with pytest.raises(Exception) as unknown:
            await q.add_job("n", {}, {"tenant_id": "t2"})
        assert "create_tenant (on the AccessControlManager where access control" in str(
            unknown.value
        )
    finally:
        await q.close()
