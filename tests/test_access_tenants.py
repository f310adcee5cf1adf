"""Tenants through ``AccessControlManager`` (issue 17): the brief's ``create_tenant`` /
``get_tenant_quota`` next to grants and audit.

* the brief's tenant example (camelCase keys too) through the manager, and every
  tenant method delegating to the deployment's ``TenantRegistry``;
* the quota of a tenant created through the manager enforced on a queue enabled for
  tenancy (at enqueue and at claim), and its changes reaching the queue;
* every tenant change audited (who, action, resource, outcome, the new config),
  atomically with the change: racing managers leave exactly one entry per change;
* a principal without ``can_manage_queue`` on ``*`` (or no principal) refused, the
  refusal audited, nothing written, also through ``acm.tenants`` directly;
* ``verify_audit_log()`` intact after all of it.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from helpers import QueueFactory, wait_until
from kitium_queue import AccessControlManager, QuotaExceededError, acting_as
from kitium_queue.errors import AccessDeniedError, ConfigurationError, TenantNotFoundError
from kitium_queue.features.tenancy import RateLimit, TenantConfig, TenantQuota

KEY = secrets.token_hex(32)
ROOT = "platform-admin"

#: The brief's createTenant config, as its README writes it (camelCase).
BRIEF_TENANT = {
    "tenantId": "acme-corp",
    "name": "ACME Corporation",
    "quota": {"maxQueueSize": 100000, "maxConcurrency": 50, "rateLimit": 1000},
    "allowedRegions": ["us-east-1", "eu-west-1"],
}


@pytest.fixture
async def acm(backend_url: str, prefix: str) -> AsyncIterator[AccessControlManager]:
    manager = AccessControlManager(backend_url, prefix=prefix, audit_key=KEY, principal=ROOT)
    await manager.grant_access(principal_id=ROOT, queue_pattern="*", role="admin")
    yield manager
    await manager.close()


async def _entries(acm: AccessControlManager, **filters: Any) -> list[Any]:
    return await acm.query_audit_log(newest_first=False, **filters)


# ------------------------------------------------------------------ the brief's example
async def test_the_briefs_tenant_example_through_the_manager(acm: AccessControlManager) -> None:
    made = await acm.create_tenant(BRIEF_TENANT)
    assert made == TenantConfig(
        "acme-corp",
        name="ACME Corporation",
        quota=TenantQuota(100_000, 50, RateLimit(1000, 1000)),
        allowed_regions=("us-east-1", "eu-west-1"),
    )
    # The brief's grant and check next to it, on the same manager.
    await acm.grant_access(
        {
            "principalId": "alice@acme.com",
            "queuePattern": "acme-*",
            "permissions": {"canAddJob": True, "canViewJob": True, "canManageQueue": False},
        }
    )
    assert await acm.check_access("alice@acme.com", "acme-orders", "canAddJob") is True
    assert await acm.get_tenant_quota("acme-corp") == made.quota
    assert await acm.get_tenant("acme-corp") == made
    assert [t.tenant_id for t in await acm.list_tenants()] == ["acme-corp"]
    # The same tenant in snake_case is the same config; it exists already.
    snake = {
        "tenant_id": "acme-corp",
        "name": "ACME Corporation",
        "quota": {"max_queue_size": 100000, "max_concurrency": 50, "rate_limit": 1000},
        "allowed_regions": ["us-east-1", "eu-west-1"],
    }
    assert TenantConfig.of(snake) == made
    with pytest.raises(ConfigurationError, match="exists already"):
        await acm.create_tenant(snake)
    # Changes in camelCase too; a quota dict changes only what it names.
    changed = await acm.update_tenant("acme-corp", quota={"maxConcurrency": 10}, weight=2)
    assert changed.quota == TenantQuota(100_000, 10, RateLimit(1000, 1000))
    assert changed.weight == 2
    changed = await acm.update_tenant("acme-corp", {"allowedRegions": ["eu-west-1"]})
    assert changed.allowed_regions == ("eu-west-1",)
    # The registry is the deployment's: the manager's connection and key prefix.
    assert acm.tenants.prefix == acm.deployment.prefix
    assert await acm.tenants.get_tenant("acme-corp") == changed
    assert await acm.remove_tenant("acme-corp") is True
    assert await acm.remove_tenant("acme-corp") is False
    with pytest.raises(TenantNotFoundError):
        await acm.get_tenant_quota("acme-corp")
    with pytest.raises(TenantNotFoundError):
        await acm.update_tenant("acme-corp", weight=3)
    assert (await acm.verify_audit_log()).ok


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"tenantId": "a", "tenant_id": "a"}, "name the same field"),
        ({"tenantId": "a", "quota": {"maxQueueSize": 1, "max_queue_size": 2}}, "same field"),
        ({"tenantId": "a", "quota": {"maxQueueSzie": 1}}, "unknown tenant quota"),
        ({"tenantID": "a"}, "did you mean 'tenant_id'"),
        ({"tenantId": "a b"}, "tenant_id"),
        ({"tenantId": "a", "quota": {"maxConcurrency": -1}}, "max_concurrency"),
        ("acme", "must be a TenantConfig or a dict"),
        ({"tenantId": "\ud800"}, "tenant_id"),
        ({"tenantId": "a*"}, "tenant_id"),
        ({"tenantId": "a", "quota": {"maxQueueSize": 2**70}}, "max_queue_size"),
        ({"tenantId": "a", "quota": {"rateLimit": float("inf")}}, "rate_limit"),
        ({"tenantId": "a", "quota": {"rateLimit": {"max": 1, "duration": {"x": 1}}}}, "duration"),
        ({"tenantId": "a", "weight": float("nan")}, "weight"),
        ({"tenantId": "a", "name": "x\x00y"}, "tenant name"),
        ({"tenantId": "a", "allowedRegions": ["eu", "{x}"]}, "allowed_regions"),
        ({"tenantId": "a", 7: 1}, "unknown tenant config"),
    ],
)
async def test_bad_tenant_configs_are_refused_before_anything(
    acm: AccessControlManager, config: Any, needle: str
) -> None:
    before = len(await _entries(acm))
    with pytest.raises(ConfigurationError, match=needle):
        await acm.create_tenant(config)
    assert await acm.list_tenants() == []
    assert len(await _entries(acm)) == before  # nothing attempted, nothing audited


# ------------------------------------------------------------------ quotas on a queue
async def test_a_tenant_made_through_the_manager_binds_a_tenancy_queue(
    acm: AccessControlManager, make_queue: QueueFactory
) -> None:
    q = make_queue("acme-orders")
    acm.tenants.enable(q)
    await acm.create_tenant({"tenantId": "acme", "quota": {"maxQueueSize": 6, "maxConcurrency": 2}})
    await acm.create_tenant({"tenantId": "globex"})
    ids = await q.add_jobs([("x", {"n": n}, {"tenant_id": "acme"}) for n in range(6)])
    with pytest.raises(QuotaExceededError) as err:
        await q.add_job("x", {"n": 6}, tenant_id="acme")
    assert (err.value.tenant_id, err.value.quota, err.value.limit) == (
        "acme",
        "max_queue_size",
        "6",
    )
    assert (await q.get_stats()).waiting + (await q.get_stats()).pending == 6
    # A change through the manager reaches the queue before it returns.
    await acm.update_tenant("acme", quota={"maxQueueSize": 7})
    ids.append(await q.add_job("x", {"n": 6}, tenant_id="acme"))
    usage = await acm.get_tenant_usage("acme")
    assert usage.queued == 7 and usage.queues["acme-orders"].queued == 7

    running: Counter[str] = Counter()
    peak: Counter[str] = Counter()
    done: list[str] = []

    async def run(job: Any) -> None:
        t = job.options["tenant_id"]
        running[t] += 1
        peak[t] = max(peak[t], running[t])
        await asyncio.sleep(0.02)
        running[t] -= 1
        done.append(t)

    q.process("x", run)
    await q.add_jobs([("x", {}, {"tenant_id": "globex"}) for _ in range(7)])
    await q.start(concurrency=8)
    await wait_until(lambda: len(done) == 14, 15)
    assert peak["acme"] == 2, peak  # max_concurrency, across the worker's slots
    assert peak["globex"] >= 3, peak  # the other tenant was not held up

    # The processor returning is not yet the completion being recorded: wait for it.
    async def acme_recorded() -> Any:
        u = await acm.get_tenant_usage("acme")
        return u if u.completed == 7 else None

    usage = await wait_until(acme_recorded, 10)
    assert (usage.queued, usage.active, usage.completed) == (0, 0, 7)
    # Removed through the manager: the queue refuses the tenant's new jobs.
    await acm.remove_tenant("acme")
    with pytest.raises(Exception, match="does not exist in queue 'acme-orders'"):
        await q.add_job("x", {}, tenant_id="acme")
    assert (await acm.verify_audit_log()).ok


# ------------------------------------------------------------------ audit
async def test_every_tenant_change_is_audited_with_who_what_and_outcome(
    acm: AccessControlManager,
) -> None:
    await acm.create_tenant(BRIEF_TENANT)
    await acm.grant_access(principal_id="ops@platform", queue_pattern="*", role="admin")
    with acting_as("ops@platform"):
        await acm.update_tenant("acme-corp", quota={"rateLimit": {"max": 5, "duration": 200}})
    await acm.remove_tenant("acme-corp")
    await acm.remove_tenant("acme-corp")  # nothing to remove: nothing written
    entries = await _entries(acm, action="tenant.*")
    assert [(e.principal, e.action, e.resource, e.outcome) for e in entries] == [
        (ROOT, "tenant.create", "tenant:acme-corp", "ok"),
        ("ops@platform", "tenant.update", "tenant:acme-corp", "ok"),
        (ROOT, "tenant.remove", "tenant:acme-corp", "ok"),
    ]
    create, update, remove = (e.metadata for e in entries)
    assert create["quota"] == {
        "max_queue_size": 100000,
        "max_concurrency": 50,
        "rate_limit": {"max": 1000, "duration": 1000},
    }
    assert create["allowed_regions"] == ["us-east-1", "eu-west-1"]
    assert create["name"] == "ACME Corporation"
    assert update["quota"]["rate_limit"] == {"max": 5, "duration": 200}
    assert create["version"] < update["version"] < remove["version"]
    assert remove == {"tenant_id": "acme-corp", "version": remove["version"]}
    assert all(e.authentic for e in entries)
    # The audit key never reaches Redis through tenant entries either.
    raw = await acm.deployment.call("xrange", acm.audit.stream)
    assert KEY.encode() not in b"".join(v for _, f in raw for v in f.values())
    report = await acm.verify_audit_log()
    assert report.ok and report.entries == len(await _entries(acm))


async def test_racing_managers_leave_one_entry_per_change(backend_url: str, prefix: str) -> None:
    """Two managers (two processes' worth of state) update one tenant concurrently: the
    registry's compare-and-set and the audit append are one script, so a change that
    lost the race wrote neither and was retried: one entry per change, versions
    distinct, chain intact."""
    a = AccessControlManager(backend_url, prefix=prefix, audit_key=KEY, principal=ROOT)
    b = AccessControlManager(backend_url, prefix=prefix, audit_key=KEY, principal=ROOT)
    try:
        await a.grant_access(principal_id=ROOT, queue_pattern="*", role="admin")
        await a.create_tenant({"tenant_id": "t", "quota": {"max_queue_size": 1}})
        sizes = list(range(2, 22))
        await asyncio.gather(
            *(
                (a if i % 2 else b).update_tenant("t", quota={"max_queue_size": n})
                for i, n in enumerate(sizes)
            )
        )
        updates = await a.query_audit_log(action="tenant.update", newest_first=False)
        assert len(updates) == len(sizes)
        assert sorted(e.metadata["quota"]["max_queue_size"] for e in updates) == sizes
        versions = [e.metadata["version"] for e in updates]
        assert len(set(versions)) == len(versions) and versions == sorted(versions)
        # The registry holds the change of the last entry.
        last = updates[-1].metadata["quota"]["max_queue_size"]
        assert (await b.get_tenant_quota("t")).max_queue_size == last
        assert (await b.verify_audit_log()).ok
    finally:
        await a.close()
        await b.close()


# ------------------------------------------------------------------ who may change tenants
async def test_a_principal_without_the_right_is_refused_and_audited(
    acm: AccessControlManager,
) -> None:
    await acm.create_tenant({"tenant_id": "acme", "quota": {"max_queue_size": 10}})
    # Admin of some queues, manager (no can_manage_queue) of all: neither suffices.
    await acm.grant_access(principal_id="alice@acme.com", queue_pattern="acme-*", role="admin")
    await acm.grant_access(principal_id="alice@acme.com", queue_pattern="*", role="manager")
    attempts = [
        ("create_tenant", lambda: acm.create_tenant({"tenant_id": "evil"})),
        ("update_tenant", lambda: acm.update_tenant("acme", quota={"max_queue_size": 10**6})),
        ("remove_tenant", lambda: acm.remove_tenant("acme")),
        # The registry itself (acm.tenants) is held to the same rule.
        ("create_tenant", lambda: acm.tenants.create_tenant({"tenant_id": "evil2"})),
        ("update_tenant", lambda: acm.tenants.update_tenant("acme", weight=100)),
        ("remove_tenant", lambda: acm.tenants.remove_tenant("acme")),
    ]
    for action, call in attempts:
        with acting_as("alice@acme.com"), pytest.raises(AccessDeniedError) as err:
            await call()
        exc = err.value
        assert (exc.principal, exc.permission, exc.action) == (
            "alice@acme.com",
            "can_manage_queue",
            action,
        )
        assert exc.resource.startswith("tenant:")
        assert "a grant on '*'" in str(exc) and "acme-*" in str(exc)
    # Nothing was written: the tenant is as it was, the others never came to be.
    assert [t.tenant_id for t in await acm.list_tenants()] == ["acme"]
    assert (await acm.get_tenant_quota("acme")).max_queue_size == 10
    assert (await acm.get_tenant("acme")).weight == 1.0  # type: ignore[union-attr]
    denied = await _entries(acm, action="access.denied")
    assert [(e.principal, e.resource, e.metadata["action"]) for e in denied] == [
        ("alice@acme.com", "tenant:evil", "create_tenant"),
        ("alice@acme.com", "tenant:acme", "update_tenant"),
        ("alice@acme.com", "tenant:acme", "remove_tenant"),
        ("alice@acme.com", "tenant:evil2", "create_tenant"),
        ("alice@acme.com", "tenant:acme", "update_tenant"),
        ("alice@acme.com", "tenant:acme", "remove_tenant"),
    ]
    assert all(e.outcome == "denied" for e in denied)
    assert denied[0].metadata["permission"] == "can_manage_queue"
    assert sorted(denied[0].metadata["grants"]) == ["acme-*"]
    assert await _entries(acm, action="tenant.*") == await _entries(
        acm, action="tenant.create"
    )  # only the one creation by the platform admin
    # A principal with no grant at all, and a call with no principal.
    with acting_as("mallory"), pytest.raises(AccessDeniedError, match="mallory"):
        await acm.create_tenant({"tenant_id": "m"})
    bare = AccessControlManager(
        acm.deployment.connection, prefix=acm.deployment.prefix, audit_key=KEY
    )
    try:
        with pytest.raises(AccessDeniedError, match="no principal is acting"):
            await bare.create_tenant({"tenant_id": "m"})
        assert (await bare.verify_audit_log()).ok
    finally:
        await bare.close()
    last = (await _entries(acm, action="access.denied"))[-2:]
    assert [(e.principal, e.resource) for e in last] == [
        ("mallory", "tenant:m"),
        (None, "tenant:m"),
    ]
    assert (await acm.verify_audit_log()).ok


@pytest.mark.parametrize(
    "grant",
    [
        {"queue_pattern": "*", "permissions": {"can_manage_queue": True}},
        {"queue_pattern": "**", "role": "admin"},
        {"queue_pattern": "*", "permissions": ["can_manage_queue", "can_view_job"]},
    ],
)
async def test_can_manage_queue_on_every_queue_may_change_tenants(
    acm: AccessControlManager, grant: dict[str, Any]
) -> None:
    await acm.grant_access(principal_id="ops", **grant)
    with acting_as("ops"):
        await acm.create_tenant({"tenant_id": "t"})
        await acm.update_tenant("t", weight=5)
        assert await acm.remove_tenant("t") is True
    who = {e.principal for e in await _entries(acm, action="tenant.*")}
    assert who == {"ops"}
    # Revoked: refused again (this manager forgets its cache at once).
    await acm.revoke_access("ops", grant["queue_pattern"])
    with acting_as("ops"), pytest.raises(AccessDeniedError):
        await acm.create_tenant({"tenant_id": "t"})
