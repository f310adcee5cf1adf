"""The features' reads pass the read guards (issue 17, item 3): group stats, breaker
state and stats, webhook endpoints and deliveries, workflow status and lists, stored
results, encryption status, a data subject's jobs, alert values and states, the memory
footprint. A protected queue refuses each of them, audited, to a
principal without ``can_view_job`` (even one that may manage the queue), before anything
is read; a viewer reads them all. Key rotation passes the admin choke point."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from helpers import QueueFactory
from kitium_queue import (
    CircuitBreakerManager,
    EncryptionManager,
    FIFOQueueManager,
    IdempotencyManager,
    JobChainManager,
    JobQueue,
    KeyConfig,
    PartitionedQueue,
    WebhookManager,
    WorkflowStep,
    acting_as,
)
from kitium_queue.errors import AccessDeniedError
from kitium_queue.features.access import READ_PERMISSIONS, AccessControlManager, Permission
from kitium_queue.features.alerts import AlertManager
from kitium_queue.features.compliance import ComplianceManager
from kitium_queue.features.encryption import generate_key
from kitium_queue.features.footprint import measure_footprint
from kitium_queue.guards import ReadCall

pytestmark = pytest.mark.redis_only

KEY = secrets.token_hex(32)
K1, K2 = generate_key(), generate_key()

#: The reads of the core (queries.py); every other name in READ_PERMISSIONS is a
#: feature's read and must be in FEATURE_READS below.
CORE_READS = {
    "get_job_status", "get_job_detail", "get_job_logs", "get_jobs_by_status", "list_jobs",
    "get_stats", "events", "get_schedules", "get_schedule", "explain",
}  # fmt: skip


class Features:
    """Every feature with reads, enabled on one queue."""

    def __init__(self, q: JobQueue) -> None:
        self.groups = FIFOQueueManager(q)
        self.breakers = CircuitBreakerManager(q, events=False)
        self.webhooks = WebhookManager(q, run_service=False)
        self.workflows = JobChainManager(q, events=False)
        self.idem = IdempotencyManager(q)
        self.enc = EncryptionManager(
            q, keys=[KeyConfig("k1", K1), KeyConfig("k2", K2)], run_rotation=False
        )
        self.compliance = ComplianceManager(q)
        self.alerts = AlertManager(
            q,
            [
                {"name": "deep", "metric": "queue_depth", "threshold": 100},
                {"name": "b1-open", "metric": "breaker_open", "threshold": 1, "breaker_id": "b1"},
            ],
            run_service=False,
        )
        self.queue = q


#: Each feature read (its name in READ_PERMISSIONS) and a call of it.
FEATURE_READS: dict[str, Callable[[Features], Any]] = {
    "get_group_stats": lambda f: f.groups.get_group_stats("g1"),
    "list_groups": lambda f: f.groups.list_groups(),
    "count_groups": lambda f: f.groups.count_groups(),
    "get_breaker": lambda f: f.breakers.get_breaker("b1"),
    "get_breaker_state": lambda f: f.breakers.get_state("b1"),
    "get_breaker_stats": lambda f: f.breakers.get_stats("b1"),
    "list_breakers": lambda f: f.breakers.list_breakers(),
    "breaker_history": lambda f: f.breakers.history("b1"),
    "list_webhooks": lambda f: f.webhooks.list_webhooks(),
    "get_webhook": lambda f: f.webhooks.get_webhook("w1"),
    "get_delivery_history": lambda f: f.webhooks.get_delivery_history("w1"),
    "list_webhook_dlq": lambda f: f.webhooks.list_dlq(),
    "webhook_stats": lambda f: f.webhooks.stats(),
    "get_workflow_status": lambda f: f.workflows.get_workflow_status("wf1"),
    "list_workflows": lambda f: f.workflows.list_workflows(),
    "parent_results": lambda f: f.workflows.parent_results("wf1:s2"),
    "get_result": lambda f: f.idem.get_result("order-7"),
    "get_execution_result": lambda f: f.idem.get_execution_result("order-7"),
    "rotation_status": lambda f: f.enc.rotation_status(),
    "subject_jobs": lambda f: f.compliance.subject_jobs("user-7"),
    "subject_count": lambda f: f.compliance.subject_count(),
    "alert_values": lambda f: f.alerts.values(),
    "alert_states": lambda f: f.alerts.states(),
    "alert_history": lambda f: f.alerts.history(),
    "measure_footprint": lambda f: measure_footprint(f.queue, samples=5),
    # The checks the dashboard's tenants and regions pages pass before they read
    # (tests/test_dashboard_tenancy_views.py: the pages refuse what these refuse).
    "list_tenants": lambda f: f.queue.queries.check("list_tenants", {}),
    "region_status": lambda f: f.queue.queries.check("region_status", {}),
    # The check the dashboard's server page passes first
    # (tests/test_dashboard_server_view.py).
    "server_status": lambda f: f.queue.queries.check("server_status", {}),
}


@pytest.fixture
async def acm(redis_url: str, prefix: str) -> AsyncIterator[AccessControlManager]:
    manager = AccessControlManager(redis_url, prefix=prefix, audit_key=KEY)
    yield manager
    await manager.close()


@pytest.fixture
async def rq(redis_url: str, prefix: str) -> AsyncIterator[QueueFactory]:
    factory = QueueFactory(redis_url, prefix)
    yield factory
    await factory.aclose()


def test_every_feature_read_is_in_this_test() -> None:
    """A feature read added later (and mapped) must be added here too."""
    assert set(READ_PERMISSIONS) - CORE_READS == set(FEATURE_READS)


async def test_each_feature_read_is_refused_without_view_permission_and_audited(
    acm: AccessControlManager, rq: QueueFactory
) -> None:
    # May add jobs and manage the queue (every administrative command), but not read.
    await acm.grant_access(
        principal_id="ops", queue_pattern="orders", permissions=["can_add_job", "can_manage_queue"]
    )
    await acm.grant_access(principal_id="vera", queue_pattern="orders", role="viewer")
    q = rq("orders")
    f = Features(q)
    await f.enc.initialize()
    acm.protect(q, principal="ops")
    # The manager may still configure a feature (an administrative command) ...
    await f.breakers.create_breaker({"id": "b1", "timeout": 60_000})
    await f.workflows.execute_workflow(
        "wf1", [WorkflowStep("s1", "a", {}), WorkflowStep("s2", "b", {}, depends_on=["s1"])]
    )
    seen: list[ReadCall] = []
    q.queries.add_guard(seen.append)  # after access control's: sees the allowed reads
    # ... but reads nothing of it.
    for name, read in FEATURE_READS.items():
        with pytest.raises(AccessDeniedError) as info:
            await read(f)
        err = info.value
        assert (err.principal, err.resource, err.permission, err.action) == (
            "ops", "orders", Permission.VIEW_JOB.value, name,
        ), name  # fmt: skip
        assert name in str(err) and "can_view_job" in str(err)
    assert seen == []  # refused before anything else ran
    denied = await acm.query_audit_log(outcome="denied", newest_first=False)
    assert [e.metadata["action"] for e in denied] == list(FEATURE_READS)
    assert all(e.principal == "ops" and e.resource == "orders" for e in denied)
    assert all(e.metadata["permission"] == "can_view_job" for e in denied)
    assert (await acm.verify_audit_log()).ok

    # A viewer reads every one of them (what exists, and None / [] / an error naming
    # the missing thing otherwise).
    with acting_as("vera"):
        assert (await f.breakers.get_stats("b1")).config.id == "b1"
        assert [s.workflow_id for s in await f.workflows.list_workflows()] == ["wf1"]
        status = await f.workflows.get_workflow_status("wf1")
        assert status is not None and set(status.steps) == {"s1", "s2"}
        assert (await f.enc.rotation_status()).current_key_id == "k1"
        assert list(await f.workflows.parent_results("wf1:s2")) == ["s1"]
        for read in FEATURE_READS.values():
            await read(f)
    # Each read passed the guards once with its own name (then the core's reads it
    # makes itself, such as get_result's get_job_status, pass them too).
    named = [c.query for c in seen if c.principal == "vera" and c.query in FEATURE_READS]
    assert named[-len(FEATURE_READS) :] == list(FEATURE_READS)
    assert {c.queue for c in seen} == {"orders"}


async def test_feature_reads_on_a_partitioned_queue_pass_every_partitions_guards(
    acm: AccessControlManager, redis_url: str, prefix: str
) -> None:
    pq = PartitionedQueue("parts", partitions=3, redis=redis_url, prefix=prefix)
    try:
        groups = FIFOQueueManager(pq)
        flows = JobChainManager(pq, events=False)
        await acm.grant_access(principal_id="p", queue_pattern="parts#[01]*", role="viewer")
        acm.protect(pq, principal="p")
        # One partition not granted: a read spanning all of them is refused there.
        with pytest.raises(AccessDeniedError) as info:
            await groups.count_groups()
        assert info.value.resource == pq.queues[2].name
        with pytest.raises(AccessDeniedError):
            await flows.list_workflows()
        await acm.grant_access(principal_id="p", queue_pattern="parts#*", role="viewer")
        assert await groups.count_groups() == 0
        assert await flows.list_workflows() == []
    finally:
        await pq.close()


async def test_key_rotation_is_an_administrative_command(
    acm: AccessControlManager, rq: QueueFactory
) -> None:
    await acm.grant_access(principal_id="mgr", queue_pattern="vault", role="manager")
    await acm.grant_access(principal_id="root", queue_pattern="vault", role="admin")
    q = rq("vault")
    enc = EncryptionManager(
        q, keys=[KeyConfig("k1", K1), KeyConfig("k2", K2)], run_rotation=False, rotation_grace_ms=1
    )
    acm.protect(q)
    with acting_as("root"):
        await enc.initialize()
    with acting_as("mgr"), pytest.raises(AccessDeniedError, match="can_manage_queue"):
        await enc.rotate_key("k1", "k2")  # managers steer queues; keys are admin work
    with acting_as("root"):
        status = await enc.rotate_key("k1", "k2")
        assert status.current_key_id == "k2" and status.state == "running"
        await enc.run_rotation()
    await acm.audit.flush()
    done = await acm.query_audit_log(action="queue.*", newest_first=False)
    assert [(e.action, e.principal) for e in done] == [
        ("queue.rotate_key", "root"),
        ("queue.run_rotation", "root"),
    ]
    assert done[0].metadata["args"] == {"old_key_id": "k1", "new_key_id": "k2"}
    [refused] = await acm.query_audit_log(outcome="denied")
    assert refused.metadata["action"] == "rotate_key" and refused.principal == "mgr"


async def test_the_alerts_leader_reads_unguarded_on_a_protected_queue(
    acm: AccessControlManager, rq: QueueFactory
) -> None:
    """A service acts for no caller: the alert evaluation reads the breakers and the
    queue's figures as the library's own reads, so a protected queue whose principal
    may not read still evaluates its alerts, and nothing is refused or audited."""
    await acm.grant_access(principal_id="writer", queue_pattern="orders", role="viewer")
    q = rq("orders")
    f = Features(q)
    await f.breakers.create_breaker({"id": "b1", "timeout": 60_000})
    await f.breakers.force_open("b1", reason="test")
    acm.protect(q)  # no principal at all: every call of a caller is refused
    with pytest.raises(AccessDeniedError):
        await f.alerts.values()
    changes = await f.alerts.evaluate(term=1)
    assert [(c.rule, c.state) for c in changes] == [("b1-open", "firing")]
    denied = await acm.query_audit_log(outcome="denied")
    assert [e.metadata["action"] for e in denied] == ["alert_values"]
