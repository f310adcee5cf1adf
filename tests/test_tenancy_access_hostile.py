"""Tenancy, access control and effectively-once under hostile input and damaged keys.

Each test pins one defect found by probing with bad input or keys written by hand:

* an idempotency key whose record holds another type refuses that job alone (before,
  the enqueue script failed after the batch's earlier jobs were written), and the
  result reads skip it instead of failing with a raw Redis error;
* a grants key or principals set of another type denies (audited ``AccessDeniedError``)
  and lists nothing instead of a raw error, and a grant change meeting one writes
  nothing (before, the audit entry and half the grant were written, then the script
  failed);
* a tenant key of another type in a queue refuses the tenant's jobs (before, they were
  let in with no quota), its copy and usage are skipped with a warning (before, an
  update failed after the registry write and stopped the copies to other queues);
* a registry entry with an unbounded version or another tenant's config is damaged,
  and says how to repair it; a damaged version counter says what to do;
* tenant ids and principals not in Unicode NFKC form are refused, with the spelling.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from helpers import QueueFactory
from kitium_queue import DeliveryGuarantee, IdempotencyManager, JobQueue
from kitium_queue.errors import (
    AccessDeniedError,
    ConfigurationError,
    JobRefusedError,
    KitiumQueueError,
    SerializationError,
)
from kitium_queue.features.access import AccessControlManager
from kitium_queue.features.tenancy import TenantConfig, TenantRegistry
from kitium_queue.features.tenancy import keys as tk
from kitium_queue.identity import check_principal

pytestmark = pytest.mark.redis_only

EO = {"delivery_guarantee": DeliveryGuarantee.EXACTLY_ONCE}


@pytest.fixture
async def acm(redis_url: str, prefix: str) -> AsyncIterator[AccessControlManager]:
    manager = AccessControlManager(
        redis_url, prefix=prefix, audit_key=secrets.token_hex(32), cache_ttl=0, principal="root"
    )
    await manager.grant_access({"principal_id": "root", "queue_pattern": "*", "role": "admin"})
    yield manager
    await manager.close()


# ------------------------------------------------------------------ effectively-once
async def test_a_damaged_idempotency_key_refuses_its_job_alone(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q = make_queue("idemwt")
    IdempotencyManager(q)
    await redis_client.hset(q.keys.idempotency("bad"), "x", "y")
    with pytest.raises(JobRefusedError, match=r"idempotency key .* holds another type"):
        await q.add_job("n", {}, idempotency_key="bad", **EO)
    with pytest.raises(JobRefusedError) as info:
        await q.add_jobs(
            [
                {"name": "n", "data": {"i": 1}, "opts": {"idempotency_key": "good"}},
                {"name": "n", "data": {"i": 2}, "opts": {"idempotency_key": "bad"}},
            ]
        )
    good, refused = info.value.ids
    assert refused is None and good is not None
    assert await redis_client.get(q.keys.idempotency("good")) == good.encode()
    assert await redis_client.zcard(q.keys.wait) == 1  # the good job, once


async def test_result_reads_skip_idempotency_keys_of_another_type(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q = make_queue("idemread")
    idem = IdempotencyManager(q)
    await redis_client.hset(q.keys.idempotency("k1"), "x", "y")
    await redis_client.set(q.keys.extra("idem-r:k2"), "garbage")
    await redis_client.set(q.keys.extra("idem-x:k3"), "garbage")
    assert await idem.get_result("k1") is None
    assert await idem.get_result("k2") is None
    assert await idem.get_execution_result("k3") is None
    await redis_client.set(q.keys.extra("idem-x"), "garbage")
    await idem.record_execution("k4", "j1", "n", {"done": True})
    found = await idem.get_execution_result("k4")
    assert found is not None and found.result == {"done": True}
    assert await idem.clean_expired() == 0


async def test_a_stored_result_that_cannot_be_decoded_names_its_key(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q = make_queue("idemgarbage")
    idem = IdempotencyManager(q)
    await redis_client.hset(q.keys.extra("idem-r:k5"), mapping={"id": "j5", "r": b"\xff{not"})
    with pytest.raises(SerializationError) as info:
        await idem.get_result("k5")
    text = str(info.value)
    assert "idempotency key 'k5'" in text and q.keys.extra("idem-r:k5") in text
    assert "Delete the Redis key" in text


# ------------------------------------------------------------------ access control
async def test_a_grants_key_of_another_type_denies_and_is_audited(
    acm: AccessControlManager, redis_url: str, prefix: str, redis_client: aioredis.Redis
) -> None:
    await acm.grant_access({"principal_id": "alice", "queue_pattern": "q*", "role": "admin"})
    key = acm.grants.key("alice")
    await redis_client.delete(key)
    await redis_client.set(key, "written by hand")
    assert await acm.check_access("alice", "q1", "can_view_job") is False
    assert [e.principal_id for e in await acm.list_access()] == ["root"]
    q = acm.protect(JobQueue("q1", redis=redis_url, prefix=prefix, principal="alice"))
    try:
        with pytest.raises(AccessDeniedError, match="principal 'alice' was refused add_job"):
            await q.add_job("n", {})
    finally:
        await q.close()
    await acm.audit.flush()
    denied = await acm.query_audit_log(principal="alice", action="access.denied")
    assert denied and denied[0].resource == "q1"


async def test_a_grant_change_meeting_a_damaged_key_writes_nothing(
    acm: AccessControlManager, redis_client: aioredis.Redis
) -> None:
    await redis_client.delete(acm.grants.principals_key)
    await redis_client.set(acm.grants.principals_key, "written by hand")
    assert await acm.list_access() == []
    await acm.audit.flush()
    before = len(await acm.query_audit_log())
    with pytest.raises(KitiumQueueError, match="holds another Redis type") as info:
        await acm.grant_access({"principal_id": "bob", "queue_pattern": "q*", "role": "viewer"})
    assert "nothing was audited" in str(info.value)
    assert await redis_client.exists(acm.grants.key("bob")) == 0
    assert len(await acm.query_audit_log()) == before
    # A grants hash of another type: the same for a revoke.
    await redis_client.delete(acm.grants.principals_key)
    await redis_client.set(acm.grants.key("carol"), "x")
    with pytest.raises(KitiumQueueError, match="holds another Redis type"):
        await acm.revoke_access("carol", "q*")
    assert len(await acm.query_audit_log()) == before


@pytest.mark.parametrize("name", ["cafe\u0301", "\uff41\uff44\uff4d\uff49\uff4e"])
def test_a_principal_not_in_nfkc_form_is_refused_with_its_spelling(name: str) -> None:
    with pytest.raises(ConfigurationError, match="not in Unicode NFKC form") as info:
        check_principal(name)
    assert ("caf\\xe9" in str(info.value)) or ("'admin'" in str(info.value))


# ------------------------------------------------------------------ tenancy
@pytest.mark.parametrize(("tid", "spelling"), [("cafe\u0301", "caf\\xe9"), ("\uff41", "'a'")])
def test_a_tenant_id_not_in_nfkc_form_is_refused_with_its_spelling(tid: str, spelling: str) -> None:
    with pytest.raises(ConfigurationError, match="not in Unicode NFKC form") as info:
        TenantConfig(tid)
    assert spelling in str(info.value)


async def test_a_damaged_tenant_key_refuses_its_jobs_and_spares_the_others(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q = make_queue("tnwt")
    other = make_queue("tnwt2")
    reg = TenantRegistry(q)
    TenantRegistry.enable(other)
    await reg.attach(other)
    await reg.create_tenant({"tenant_id": "bad", "quota": {"max_queue_size": 1}})
    await reg.create_tenant({"tenant_id": "good"})
    key = tk.tenant(q.keys, "bad")
    await redis_client.delete(key)
    await redis_client.set(key, "written by hand")
    with pytest.raises(JobRefusedError, match=r"record of tenant 'bad' .* holds another type"):
        await q.add_job("n", {}, tenant_id="bad")
    assert await q.add_job("n", {}, tenant_id="good")
    # An update reaches every queue but the damaged copy (no raw error half-way).
    updated = await reg.update_tenant("bad", weight=2)
    assert updated.weight == 2.0
    assert await redis_client.hget(tk.tenant(other.keys, "bad"), "w") == b"2.0"
    assert await redis_client.get(key) == b"written by hand"
    usage = await reg.get_tenant_usage("bad")
    assert usage.queues[q.name].queued == 0 and usage.queues[other.name].queued == 0


async def test_damaged_registry_entries_are_ignored_and_say_how_to_repair(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q = make_queue("tnreg")
    reg = TenantRegistry(q)
    await reg.create_tenant({"tenant_id": "ok"})
    key = tk.registry(q.keys.prefix)
    await redis_client.hset(key, "huge", '{"tenant_id": "huge", "version": 1e300}')
    await redis_client.hset(key, "alias", '{"tenant_id": "ok", "version": 3}')
    assert [t.tenant_id for t in await reg.list_tenants()] == ["ok"]
    assert await reg.get_tenant("alias") is None
    # The huge version was never copied into the queue (it would outrank every change).
    assert await redis_client.exists(tk.tenant(q.keys, "huge")) == 0
    with pytest.raises(ConfigurationError, match=r"tenant 'huge' is damaged .*HDEL"):
        await reg.update_tenant("huge", weight=2)
    with pytest.raises(ConfigurationError, match=r"tenant 'alias' is damaged .*HDEL"):
        await reg.create_tenant({"tenant_id": "alias"})


async def test_damaged_registry_keys_give_clear_errors_not_raw_ones(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q = make_queue("tnkeys")
    reg = TenantRegistry(q)
    await reg.create_tenant({"tenant_id": "t"})
    prefix = q.keys.prefix
    await redis_client.set(tk.registry_version(prefix), "not a number")
    with pytest.raises(KitiumQueueError, match=r"version counter .* is damaged"):
        await reg.create_tenant({"tenant_id": "u"})
    await redis_client.delete(tk.registry_queues(prefix))
    await redis_client.set(tk.registry_queues(prefix), "x")
    assert await reg.queues() == []
    # A fresh queue's first tenant job still goes in: it cannot register, but the
    # tenants are copied into it.
    fresh = make_queue("tnkeys2")
    TenantRegistry.enable(fresh)
    assert await fresh.add_job("n", {}, tenant_id="t")
