"""Tenancy and access control under hostile use: quotas under concurrent adds from
several processes, tenant ids that look like each other's keys, refused tenant changes
audited with their principal, and no job payload in the audit log."""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import textwrap
from collections.abc import AsyncIterator

import pytest

from helpers import QueueFactory
from kitium_queue import AccessControlManager, JobQueue, QuotaExceededError, acting_as
from kitium_queue.errors import AccessDeniedError, ConfigurationError, JobRefusedError
from kitium_queue.features.tenancy import TenantConfig, TenantRegistry

KEY = secrets.token_hex(32)
ROOT = "platform-admin"

_ADDER = textwrap.dedent(
    """
    import asyncio, json, sys
    from kitium_queue import JobQueue, QuotaExceededError
    from kitium_queue.features.tenancy import TenantRegistry

    async def main(url, prefix, n):
        q = JobQueue("shared", redis=url, prefix=prefix)
        TenantRegistry.enable(q)
        ok = refused = 0

        async def one():
            nonlocal ok, refused
            try:
                await q.add_job("x", {}, tenant_id="flood")
                ok += 1
            except QuotaExceededError:
                refused += 1

        await asyncio.gather(*(one() for _ in range(n)))
        await q.close()
        print(json.dumps([ok, refused]))

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    """
)


@pytest.fixture
async def acm(backend_url: str, prefix: str) -> AsyncIterator[AccessControlManager]:
    manager = AccessControlManager(backend_url, prefix=prefix, audit_key=KEY, principal=ROOT)
    await manager.grant_access(principal_id=ROOT, queue_pattern="*", role="admin")
    yield manager
    await manager.close()


@pytest.mark.redis_only
async def test_max_queue_size_holds_exactly_under_adds_from_several_processes(
    redis_url: str, prefix: str, make_queue: QueueFactory
) -> None:
    q = make_queue("shared")
    reg = TenantRegistry(q)
    await reg.create_tenant({"tenant_id": "flood", "quota": {"max_queue_size": 60}})
    await reg.attach(q)
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _ADDER,
            redis_url,
            prefix,
            "40",
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(4)
    ]
    outs = [await asyncio.wait_for(p.communicate(), 120) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    counts = [json.loads(out.decode().strip().splitlines()[-1]) for out, _ in outs]
    assert sum(c[0] for c in counts) == 60  # not one job over the quota
    assert sum(c[1] for c in counts) == 160 - 60
    usage = await reg.get_tenant_usage("flood")
    assert usage.queued == 60
    assert (await q.get_stats()).waiting + (await q.get_stats()).pending == 60


async def test_max_queue_size_holds_exactly_under_concurrent_adds_and_batches(
    make_queue: QueueFactory,
) -> None:
    queues = [make_queue("conc") for _ in range(6)]
    reg = TenantRegistry(queues[0])
    await reg.create_tenant({"tenant_id": "t", "quota": {"max_queue_size": 25}})
    for q in queues[1:]:
        reg.enable(q)
    added = 0

    async def single(q: JobQueue) -> None:
        nonlocal added
        try:
            await q.add_job("x", {}, tenant_id="t")
            added += 1
        except QuotaExceededError:
            pass

    async def batch(q: JobQueue) -> None:
        nonlocal added
        try:
            ids = await q.add_jobs([("x", {}, {"tenant_id": "t"}) for _ in range(7)])
            added += len(ids)
        except JobRefusedError as exc:
            added += sum(1 for i in exc.ids if i is not None)

    singles = [single(q) for q in queues for _ in range(10)]
    await asyncio.gather(*singles, *(batch(q) for q in queues))
    assert added == 25
    assert (await reg.get_tenant_usage("t")).queued == 25


async def test_tenant_ids_with_colons_keep_their_own_quota_count_and_removal(
    make_queue: QueueFactory,
) -> None:
    # "a:b" and "a" (whose keys are tn:a, tn-run:a, parked:t:a...) share no key: a's
    # quota, count and removal leave a:b's alone, and the reverse.
    q = make_queue("colons")
    reg = TenantRegistry(q)
    await reg.create_tenant({"tenant_id": "a", "quota": {"max_queue_size": 2}})
    await reg.create_tenant({"tenant_id": "a:b", "quota": {"max_queue_size": 1}})
    await reg.create_tenant({"tenant_id": "a:b:c"})
    await q.add_job("x", {}, tenant_id="a:b")
    with pytest.raises(QuotaExceededError):
        await q.add_job("x", {}, tenant_id="a:b")
    for _ in range(2):
        await q.add_job("x", {}, tenant_id="a")
    with pytest.raises(QuotaExceededError):
        await q.add_job("x", {}, tenant_id="a")
    for _ in range(5):
        await q.add_job("x", {}, tenant_id="a:b:c")
    assert [(await reg.get_tenant_usage(t)).queued for t in ("a", "a:b", "a:b:c")] == [2, 1, 5]
    assert await reg.remove_tenant("a")
    with pytest.raises(JobRefusedError):
        await q.add_job("x", {}, tenant_id="a")
    cfg = await reg.get_tenant("a:b")
    assert cfg is not None and cfg.quota.max_queue_size == 1
    assert (await reg.get_tenant_usage("a:b")).queued == 1
    with pytest.raises(QuotaExceededError):
        await q.add_job("x", {}, tenant_id="a:b")


@pytest.mark.parametrize(
    "bad",
    ["a*", "a?", "a[b]", "a{b}", "a}", "a\\b", "a b", "", "a\x00", "a\ud800", "\u202eab",
     "a" * 129],
)  # fmt: skip
def test_tenant_ids_that_could_glob_or_split_keys_are_refused(bad: str) -> None:
    with pytest.raises(ConfigurationError):
        TenantConfig.of({"tenant_id": bad})


async def test_a_tenant_change_needs_manage_on_every_queue_and_each_refusal_is_audited(
    acm: AccessControlManager, backend_url: str, prefix: str
) -> None:
    await acm.create_tenant({"tenant_id": "acme", "quota": {"max_queue_size": 5}})
    # admin on acme-* or manager on * is not enough; neither is no principal at all.
    await acm.grant_access(principal_id="bob", queue_pattern="acme-*", role="admin")
    await acm.grant_access(principal_id="carol", queue_pattern="*", role="manager")
    for who in ("bob", "carol"):
        with acting_as(who), pytest.raises(AccessDeniedError):
            await acm.update_tenant("acme", quota={"max_queue_size": 10_000})
    bare = AccessControlManager(backend_url, prefix=prefix, audit_key=KEY)
    try:
        with pytest.raises(AccessDeniedError):
            await bare.remove_tenant("acme")
    finally:
        await bare.close()
    cfg = await acm.get_tenant("acme")
    assert cfg is not None and cfg.quota.max_queue_size == 5
    denied = await acm.query_audit_log(action="access.denied", newest_first=False)
    assert [(e.principal, e.resource) for e in denied] == [
        ("bob", "tenant:acme"),
        ("carol", "tenant:acme"),
        (None, "tenant:acme"),
    ]
    assert (await acm.verify_audit_log()).ok


async def test_audited_commands_on_a_protected_queue_carry_no_job_payload(
    acm: AccessControlManager, make_queue: QueueFactory
) -> None:
    q = acm.protect(make_queue("paid"), principal=ROOT)
    secret = "card-4111111111111111"
    jid = await q.add_job("x", {"card": secret}, tenant_id=None)
    await q.remove_job(jid)
    await q.add_job("x", {"card": secret})
    await q.drain()
    await acm.audit.flush()
    entries = await acm.query_audit_log(newest_first=False, limit=500)
    assert {e.action for e in entries} >= {"queue.remove_job", "queue.drain"}
    assert all(e.principal is not None for e in entries if e.action.startswith("queue."))
    assert secret not in json.dumps([e.metadata for e in entries], default=str)
