"""Access control (issue 17, item 2): grants, roles, glob patterns, checks, and queues
that refuse what their principal may not do — every grant change and every refusal
with its audit entry. Runs on real Redis and on memory://."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from helpers import QueueFactory, wait_for_status
from kitium_queue import JobQueue, PartitionedQueue, QueueRole, SyncJobQueue, acting_as
from kitium_queue.errors import AccessDeniedError, ConfigurationError, PermissionDeniedError
from kitium_queue.features.access import (
    COMMAND_PERMISSIONS,
    READ_PERMISSIONS,
    ROLE_PERMISSIONS,
    AccessControlManager,
    AccessEntry,
    Permission,
    register_read,
)
from kitium_queue.features.access.model import read_permission

KEY = secrets.token_hex(32)
SRC = Path(__file__).resolve().parents[1] / "src" / "kitium_queue"

P = Permission


class Clock:
    """An injected monotonic clock (seconds)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def acm(backend_url: str, prefix: str) -> AsyncIterator[AccessControlManager]:
    manager = AccessControlManager(backend_url, prefix=prefix, audit_key=KEY)
    yield manager
    await manager.close()


async def _grant(acm: AccessControlManager, who: str, pattern: str, **kw: Any) -> AccessEntry:
    return await acm.grant_access({"principal_id": who, "queue_pattern": pattern, **kw})


# ------------------------------------------------------------------ the model
def test_roles_are_the_documented_bundles() -> None:
    assert ROLE_PERMISSIONS[QueueRole.VIEWER] == {P.VIEW_JOB}
    assert ROLE_PERMISSIONS[QueueRole.OPERATOR] == {P.VIEW_JOB, P.MODIFY_JOB}
    assert ROLE_PERMISSIONS[QueueRole.MANAGER] == {
        P.VIEW_JOB, P.ADD_JOB, P.MODIFY_JOB, P.CONTROL_QUEUE,
    }  # fmt: skip
    assert ROLE_PERMISSIONS[QueueRole.ADMIN] == set(Permission)
    # The brief's flag can_manage_queue alone allows every administrative command.
    entry = AccessEntry("ops", "*", {"can_manage_queue": True})
    assert entry.effective() == {P.MANAGE_QUEUE, P.CONTROL_QUEUE, P.MODIFY_JOB}


def test_every_administrative_command_of_the_package_is_mapped() -> None:
    """Each command name passed to the admin choke point anywhere in the package has a
    permission (an unmapped one would silently need can_manage_queue)."""
    found: set[str] = set()
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        found |= set(re.findall(r'(?:\.execute|_admin)\(\s*"(\w+)"', text))
    assert {"pause", "retry_job", "clear", "put_schedule", "pause_group"} <= found, found
    assert found - set(COMMAND_PERMISSIONS) == set()
    assert COMMAND_PERMISSIONS["retry_job"] is P.MODIFY_JOB
    assert COMMAND_PERMISSIONS["replay_dlq"] is P.CONTROL_QUEUE
    assert COMMAND_PERMISSIONS["clear"] is P.MANAGE_QUEUE


def test_every_read_of_the_package_is_mapped_to_can_view_job() -> None:
    """Each read name passed to the read guards anywhere in the package (the core's
    ``self.check(...)``, a feature's ``queue.queries.check(...)`` or ``check_reads(
    queues, ...)``) needs can_view_job; an unmapped one would need can_manage_queue
    and a viewer would be refused it."""
    found: set[str] = set()
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        found |= set(re.findall(r'(?:\.check\(|check_reads\([^,()]+,)\s*"(\w+)"', text))
    assert {"get_job_status", "explain", "get_group_stats", "list_breakers"} <= found, found
    assert {"get_delivery_history", "get_workflow_status", "get_result"} <= found, found
    assert {"rotation_status", "list_workflows", "count_groups"} <= found, found
    assert found - set(READ_PERMISSIONS) == set()
    assert {READ_PERMISSIONS[q] for q in found} == {P.VIEW_JOB}
    # Nothing mapped that no read uses (a renamed read would leave a stale name).
    assert set(READ_PERMISSIONS) - found == set()


def test_an_unmapped_read_needs_manage_until_it_is_registered() -> None:
    assert read_permission("my_feature_report") is P.MANAGE_QUEUE
    register_read("my_feature_report")
    try:
        assert read_permission("my_feature_report") is P.VIEW_JOB
        with pytest.raises(ConfigurationError, match="unknown permission"):
            register_read("my_feature_report", "can_fly")
    finally:
        READ_PERMISSIONS.pop("my_feature_report")


async def test_an_unmapped_read_is_refused_to_a_viewer(
    acm: AccessControlManager, make_queue: QueueFactory
) -> None:
    await _grant(acm, "vera", "q", role="viewer")
    await _grant(acm, "root", "q", role="admin")
    q = acm.protect(make_queue("q", principal="vera"))
    with pytest.raises(AccessDeniedError, match="can_manage_queue"):
        await q.queries.check("my_feature_report", {})
    with acting_as("root"):
        await q.queries.check("my_feature_report", {})


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ({"queue_pattern": "a"}, "needs principal_id"),
        ({"principal_id": "a"}, "needs queue_pattern"),
        ({"principal_id": "a", "queue_pattern": "q", "role": "owner"}, "unknown role"),
        ({"principal_id": "a", "queue_pattern": "q"}, "allows nothing"),
        ({"principal_id": "a", "queue_pattern": "q", "permissions": {"can_fly": True}},
         "unknown permission"),
        ({"principal_id": "a", "queue_pattern": "q", "permissions": {"can_add_job": 1}},
         "must be True or False"),
        ({"principal_id": "a\n", "queue_pattern": "q", "role": "viewer"}, "spaces"),
        ({"principal_id": "a\x07b", "queue_pattern": "q", "role": "viewer"}, "control"),
        ({"principal_id": "a", "queue_pattern": "q{x}", "role": "viewer"}, "invalid queue pattern"),
        ({"principal_id": "a", "queue_pattern": "q", "role": "viewer", "tenant": "x"},
         "unknown access entry field"),
    ],
)  # fmt: skip
def test_bad_entries_are_refused_with_the_reason(entry: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(needle)):
        AccessEntry.parse(entry)


def test_manager_needs_a_usable_audit_key() -> None:
    with pytest.raises(ConfigurationError, match="needs audit_key"):
        AccessControlManager("memory://")
    with pytest.raises(ConfigurationError, match="at least 16"):
        AccessControlManager("memory://", audit_key="short")


# ------------------------------------------------------------------ grants and checks
async def test_brief_example_grant_and_check_with_a_glob(acm: AccessControlManager) -> None:
    stored = await acm.grant_access(
        {
            "principalId": "alice@acme.com",
            "queuePattern": "acme-*",
            "permissions": {"canAddJob": True, "canViewJob": True, "canManageQueue": False},
        }
    )
    assert stored.granted_at is not None
    assert await acm.check_access("alice@acme.com", "acme-orders", "canAddJob")
    assert await acm.check_access("alice@acme.com", "acme-orders", "can_view_job")
    assert not await acm.check_access("alice@acme.com", "acme-orders", "can_manage_queue")
    assert not await acm.check_access("alice@acme.com", "globex-orders", "can_add_job")
    assert not await acm.check_access("bob@acme.com", "acme-orders", "can_view_job")
    [entry] = await acm.query_audit_log(action="access.grant")
    assert (entry.resource, entry.outcome) == ("acme-*", "ok")
    assert entry.metadata["principal"] == "alice@acme.com"
    assert entry.metadata["permissions"] == ["can_add_job", "can_view_job"]
    assert entry.authentic is True


async def test_grants_are_a_union_and_a_grant_on_the_same_pattern_replaces(
    acm: AccessControlManager,
) -> None:
    await _grant(acm, "bob", "acme-*", role="viewer")
    await _grant(acm, "bob", "acme-[a-m]*", permissions=["can_add_job"])
    assert await acm.permissions_on("bob", "acme-billing") == {P.VIEW_JOB, P.ADD_JOB}
    assert await acm.permissions_on("bob", "acme-orders") == {P.VIEW_JOB}
    await _grant(acm, "bob", "acme-*", role="operator")  # replaces the viewer grant
    got = {e.queue_pattern: e for e in await acm.list_access("bob")}
    assert set(got) == {"acme-*", "acme-[a-m]*"} and got["acme-*"].role is QueueRole.OPERATOR
    assert await acm.permissions_on("bob", "acme-orders") == {P.VIEW_JOB, P.MODIFY_JOB}
    assert await acm.revoke_access("bob", "acme-[a-m]*")
    assert not await acm.revoke_access("bob", "acme-[a-m]*")  # gone: nothing written
    assert await acm.permissions_on("bob", "acme-billing") == {P.VIEW_JOB, P.MODIFY_JOB}
    actions = [e.action for e in await acm.query_audit_log(newest_first=False)]
    assert actions == ["access.grant", "access.grant", "access.grant", "access.revoke"]


async def test_who_granted_is_recorded(acm: AccessControlManager) -> None:
    await _grant(acm, "root@acme.com", "*", role="admin")  # grants are changed by admins
    with acting_as("root@acme.com"):
        stored = await _grant(acm, "carol", "q", role="admin")
    assert stored.granted_by == "root@acme.com"
    [listed] = await acm.list_access("carol")
    assert listed.granted_by == "root@acme.com"
    [entry] = await acm.query_audit_log(principal="root@acme.com")
    assert entry.action == "access.grant"


async def test_check_access_refuses_bad_arguments(acm: AccessControlManager) -> None:
    with pytest.raises(ConfigurationError, match="queue name"):
        await acm.check_access("a", "acme-*", "can_add_job")  # a pattern is not a queue
    with pytest.raises(ConfigurationError, match="unknown permission"):
        await acm.check_access("a", "q", "can_fly")
    with pytest.raises(ConfigurationError):
        await acm.check_access("", "q", "can_add_job")


# ------------------------------------------------------------------ protected queues
#: What each operation of the matrix needs, and the call.
OPS: dict[str, tuple[Permission, Callable[[JobQueue], Any]]] = {
    "get_stats": (P.VIEW_JOB, lambda q: q.get_stats()),
    "add_job": (P.ADD_JOB, lambda q: q.add_job("j", {"n": 1})),
    "promote_delayed": (P.MODIFY_JOB, lambda q: q.promote_delayed()),
    "pause": (P.CONTROL_QUEUE, lambda q: q.pause()),
    "drain": (P.MANAGE_QUEUE, lambda q: q.drain()),
}


@pytest.mark.parametrize("role", list(QueueRole))
async def test_each_role_may_do_exactly_its_bundle_and_every_refusal_is_audited(
    acm: AccessControlManager, make_queue: QueueFactory, role: QueueRole
) -> None:
    who = f"{role.value}@acme.com"
    await _grant(acm, who, "acme-*", role=role.value)
    queue = acm.protect(make_queue("acme-orders", principal=who))
    allowed = ROLE_PERMISSIONS[role]
    for name, (perm, call) in OPS.items():
        if perm in allowed:
            await call(queue)
        else:
            with pytest.raises(AccessDeniedError) as info:
                await call(queue)
            assert (info.value.principal, info.value.permission) == (who, perm.value)
            assert name in str(info.value) and perm.value in str(info.value)
    await acm.audit.flush()
    denied = await acm.query_audit_log(outcome="denied", newest_first=False)
    expected = [n for n, (perm, _) in OPS.items() if perm not in allowed]
    assert [e.metadata["action"] for e in denied] == expected
    assert all(e.principal == who and e.resource == "acme-orders" for e in denied)
    done = await acm.query_audit_log(action="queue.*", newest_first=False)
    ran = [
        n for n, (perm, _) in OPS.items() if perm in allowed and perm not in (P.VIEW_JOB, P.ADD_JOB)
    ]
    assert [e.action for e in done] == [f"queue.{n}" for n in ran]
    assert all(e.outcome == "ok" and e.principal == who for e in done)
    assert (await acm.verify_audit_log()).ok


async def test_a_glob_grant_covers_matching_queues_only(
    acm: AccessControlManager, make_queue: QueueFactory
) -> None:
    await _grant(acm, "alice", "acme-[!t]*", role="manager")
    ok = acm.protect(make_queue("acme-orders", principal="alice"))
    test = acm.protect(make_queue("acme-test", principal="alice"))
    other = acm.protect(make_queue("globex-orders", principal="alice"))
    await ok.add_job("j", {})
    for q in (test, other):
        with pytest.raises(AccessDeniedError, match="can_add_job"):
            await q.add_job("j", {})
    # Nothing of a refused add was written.
    assert (await test.queries.job_status("1")) is None
    assert (await ok.queries.job_status("1")) is not None


async def test_a_refused_bulk_add_writes_nothing(
    acm: AccessControlManager, make_queue: QueueFactory
) -> None:
    await _grant(acm, "viewer", "q", role="viewer")
    q = acm.protect(make_queue("q", principal="viewer"))
    with pytest.raises(AccessDeniedError):
        await q.add_jobs([("j", {"i": i}, {}) for i in range(50)])
    assert (await q.get_stats()).waiting == 0


async def test_no_principal_at_all_is_refused(
    acm: AccessControlManager, make_queue: QueueFactory
) -> None:
    await _grant(acm, "alice", "*", role="admin")
    q = acm.protect(make_queue("q"))
    for call in (q.add_job("j", {}), q.get_stats(), q.pause()):
        with pytest.raises(AccessDeniedError, match="no principal is acting") as info:
            await call
        assert info.value.principal is None
    with acting_as("alice"):
        await q.add_job("j", {})
    entries = await acm.query_audit_log(outcome="denied")
    assert len(entries) == 3 and all(e.principal is None for e in entries)


async def test_acting_as_overrides_the_queue_principal_per_task(
    acm: AccessControlManager, make_queue: QueueFactory
) -> None:
    await _grant(acm, "svc-web", "q", role="viewer")
    await _grant(acm, "svc-ingest", "q", permissions=["can_add_job"])
    q = acm.protect(make_queue("q", principal="svc-web"))

    async def ingest(i: int) -> str:
        with acting_as("svc-ingest"):
            await asyncio.sleep(0)
            return await q.add_job("j", {"i": i})

    async def look() -> None:
        await asyncio.sleep(0)
        with pytest.raises(AccessDeniedError):
            await q.add_job("j", {})  # svc-web may only read
        await q.get_stats()

    results = await asyncio.gather(*(ingest(i) for i in range(20)), *(look() for _ in range(20)))
    assert len({r for r in results if r}) == 20
    assert (await q.get_stats()).waiting == 20


async def test_every_read_needs_can_view_job(
    acm: AccessControlManager, make_queue: QueueFactory
) -> None:
    await _grant(acm, "writer", "q", permissions=["can_add_job"])
    q = acm.protect(make_queue("q", principal="writer"))
    jid = await q.add_job("j", {"secret": "payload"})

    async def events() -> None:
        async for _ in q.events(last_id="0", follow=False, block_ms=10):
            pass

    reads = [
        q.get_job_status(jid), q.get_job_detail(jid), q.get_job_logs(jid),
        q.get_jobs_by_status("waiting"), q.list_jobs("waiting"), q.get_stats(),
        q.get_dlq_jobs(), events(), q.get_schedules(), q.get_schedule("s"), q.explain(jid),
    ]  # fmt: skip
    for read in reads:
        with pytest.raises(AccessDeniedError, match="can_view_job"):
            await read
    assert (await q.health_check()).healthy  # a PING shows no job data
    denied = await acm.query_audit_log(outcome="denied", newest_first=False)
    assert [e.metadata["action"] for e in denied] == [
        "get_job_status", "get_job_detail", "get_job_logs", "get_jobs_by_status",
        "list_jobs", "get_stats", "get_jobs_by_status", "events", "get_schedules",
        "get_schedule", "explain",
    ]  # fmt: skip
    assert all("payload" not in str(e.metadata) for e in denied)


async def test_schedules_need_control_and_add(
    acm: AccessControlManager, make_queue: QueueFactory
) -> None:
    await _grant(acm, "op", "q", role="operator")
    await _grant(acm, "mgr", "q", role="manager")
    q = acm.protect(make_queue("q"))
    with acting_as("op"), pytest.raises(AccessDeniedError, match="can_control_queue"):
        await q.schedule_every("tick", {}, 60_000)
    with acting_as("mgr"):
        await q.schedule_every("tick", {}, 60_000)
        assert [s.job_name for s in await q.get_schedules()] == ["tick"]


async def test_a_worker_of_a_protected_queue_still_processes(
    acm: AccessControlManager, make_queue: QueueFactory
) -> None:
    """Processing is bound by the worker's Redis user, not by grants; the DLQ
    notification reads on the application's behalf, unguarded."""
    notified: list[Any] = []
    await _grant(acm, "producer", "q", permissions=["can_add_job", "can_view_job"])
    q = make_queue("q", principal="producer", dlq={"notification_handler": notified.append})
    acm.protect(q)

    @q.process("fail")
    async def fail(job: Any) -> None:
        raise ValueError("boom")

    @q.process("ok")
    async def ok(job: Any) -> int:
        return 1

    good = await q.add_job("ok", {})
    bad = await q.add_job("fail", {}, attempts=1)
    await q.start()
    await wait_for_status(q, good, "completed")
    await wait_for_status(q, bad, "dlq", "failed")
    await q.worker.stop(timeout_ms=500)
    for _ in range(100):
        if notified:
            break
        await asyncio.sleep(0.01)
    assert [i.id for i in notified] == [bad]


async def test_revoke_takes_effect_elsewhere_within_the_cache_ttl(
    backend_url: str, prefix: str, make_queue: QueueFactory
) -> None:
    clock = Clock()
    admin = AccessControlManager(backend_url, prefix=prefix, audit_key=KEY)
    other = AccessControlManager(
        backend_url, prefix=prefix, audit_key=KEY, cache_ttl=2000, monotonic=clock
    )
    try:
        await _grant(admin, "dave", "q", role="manager")
        q = other.protect(make_queue("q", principal="dave"))
        await q.add_job("j", {})  # reads dave's grants: cached until now + 2 s
        assert await admin.revoke_access("dave", "q")
        # In the revoking process: at once.
        assert not await admin.check_access("dave", "q", "can_add_job")
        clock.now += 1.9  # elsewhere, within the bound, the cached grant still holds
        await q.add_job("j", {})
        clock.now += 0.2  # past the bound: the revoke holds there too
        with pytest.raises(AccessDeniedError):
            await q.add_job("j", {})
        # A new grant is picked up the same way.
        await _grant(admin, "dave", "q", role="manager")
        with pytest.raises(AccessDeniedError):
            await q.add_job("j", {})  # the refusal is cached too (until the bound)
        clock.now += 2.1
        await q.add_job("j", {})
    finally:
        await other.close()
        await admin.close()


async def test_cache_ttl_zero_reads_every_time(
    backend_url: str, prefix: str, make_queue: QueueFactory
) -> None:
    admin = AccessControlManager(backend_url, prefix=prefix, audit_key=KEY)
    other = AccessControlManager(backend_url, prefix=prefix, audit_key=KEY, cache_ttl=0)
    try:
        await _grant(admin, "erin", "q", role="manager")
        q = other.protect(make_queue("q", principal="erin"))
        await q.add_job("j", {})
        await admin.revoke_access("erin", "q")
        with pytest.raises(AccessDeniedError):
            await q.add_job("j", {})
    finally:
        await other.close()
        await admin.close()


async def test_a_damaged_grant_grants_nothing(
    acm: AccessControlManager, caplog: pytest.LogCaptureFixture
) -> None:
    await _grant(acm, "frank", "q", role="admin")
    client = await acm.deployment.client()
    await client.hset(acm.grants.key("frank"), "q", b"\xff not json")
    await client.hset(acm.grants.key("frank"), "r", b'{"perms": ["can_fly"]}')
    acm.grants.forget()
    with caplog.at_level(logging.WARNING):
        assert await acm.permissions_on("frank", "q") == frozenset()
        assert await acm.permissions_on("frank", "r") == frozenset()
    assert "does not parse" in caplog.text and "not json" not in caplog.text


async def test_protect_partitioned_and_sync_queues(
    acm: AccessControlManager, backend_url: str, prefix: str
) -> None:
    await _grant(acm, "gina", "parts#*", role="viewer")
    pq = PartitionedQueue("parts", partitions=3, redis=backend_url, prefix=prefix)
    try:
        acm.protect(pq, principal="gina")
        assert all(q.ctx.principal == "gina" for q in pq.queues)
        await pq.get_stats()
        with pytest.raises(AccessDeniedError):
            await pq.add_job("j", {})
    finally:
        await pq.close()
    if backend_url.startswith("memory://"):
        return  # the sync client's loop thread would need the same memory server
    await _grant(acm, "hank", "sync-q", role="viewer")
    sq = await asyncio.to_thread(SyncJobQueue, "sync-q", redis=backend_url, prefix=prefix)
    # The guards run on the sync client's loop: the manager is used there.
    acm_sync = AccessControlManager(backend_url, prefix=prefix, audit_key=KEY)
    try:
        acm_sync.protect(sq, principal="hank")
        await asyncio.to_thread(sq.get_stats)
        with pytest.raises(PermissionDeniedError):
            await asyncio.to_thread(sq.add_job, "j", {})
    finally:
        await asyncio.to_thread(sq.close)


async def test_protecting_with_another_manager_is_refused(
    acm: AccessControlManager, backend_url: str, prefix: str, make_queue: QueueFactory
) -> None:
    q = make_queue("q")
    assert acm.protect(q) is q
    acm.protect(q)  # again: no-op
    assert q.admin.guards.count(acm.protection_of(q).admin_guard) == 1  # type: ignore[union-attr]
    other = AccessControlManager(backend_url, prefix=prefix, audit_key=KEY)
    with pytest.raises(ConfigurationError, match="another AccessControlManager"):
        other.protect(q)
    with pytest.raises(ConfigurationError, match="takes a JobQueue"):
        acm.protect(object())
    await other.close()


async def test_require_access_for_the_applications_own_checks(
    acm: AccessControlManager,
) -> None:
    await _grant(acm, "ivan", "reports-*", role="viewer")
    await acm.require_access("ivan", "reports-daily", "can_view_job", action="export")
    with pytest.raises(AccessDeniedError, match="export"):
        await acm.require_access("ivan", "reports-daily", "can_manage_queue", action="export")
    [entry] = await acm.query_audit_log(outcome="denied")
    assert entry.metadata == {"action": "export", "permission": "can_manage_queue",
                              "grants": ["reports-*"]}  # fmt: skip


async def test_audit_access_writes_the_applications_own_entries(
    acm: AccessControlManager,
) -> None:
    entry_id = await acm.audit_access(
        "alice@acme.com", "add_job", "acme-orders", {"jobId": "123", "api_key": "sk-live-1"}
    )
    [entry] = await acm.query_audit_log(principal="alice@acme.com")
    assert entry.id == entry_id and entry.action == "add_job"
    assert entry.metadata == {"jobId": "123", "api_key": "***"}  # a secret never stored
    with pytest.raises(ConfigurationError, match="4096"):
        await acm.audit_access("a", "x", "r", {"blob": ["y" * 1000] * 10})
    with pytest.raises(ConfigurationError, match="must be a dict"):
        await acm.audit_access("a", "x", "r", ["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="control"):
        await acm.audit_access("a", "x\x1b[31m", "r")


async def test_a_manager_built_from_a_queue_uses_its_connection_and_prefix(
    acm: AccessControlManager, make_queue: QueueFactory
) -> None:
    q = make_queue("acme-orders")
    from_queue = AccessControlManager(q, audit_key=KEY)
    try:
        assert from_queue.deployment.prefix == q.keys.prefix
        await from_queue.grant_access(principal_id="zoe", queue_pattern="acme-*", role="viewer")
        # The same grants and the same audit log as a manager given the URL and prefix.
        assert await acm.check_access("zoe", "acme-orders", "can_view_job")
        [entry] = await acm.query_audit_log(action="access.grant")
        assert entry.metadata["principal"] == "zoe"
    finally:
        await from_queue.close()
