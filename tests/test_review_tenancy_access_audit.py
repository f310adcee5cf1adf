"""Tenancy, access control and the audit log against hostile tenants: revocation while
a grant read is under way, what a tenant's Redis user can and cannot do, and the
growth of the audit log under refusals. Runs on a real Redis."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_sync
import redis.asyncio as redis_async
import redis.exceptions as redis_exc

from _redis import RedisServer
from kitium_queue import JobQueue
from kitium_queue.errors import AccessDeniedError, QuotaExceededError
from kitium_queue.features.access import AccessControlManager
from kitium_queue.features.access.redisacl import redis_acl_rules
from kitium_queue.features.tenancy import TenantRegistry
from kitium_queue.features.tenancy import keys as tk

KEY = secrets.token_hex(32)


class _SlowRead:
    """Holds a principal's grant read after Redis replied (a slow network reply)."""

    def __init__(self, acm: AccessControlManager) -> None:
        self.real = acm.grants.read
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.armed = True
        acm.grants.read = self  # type: ignore[method-assign]

    async def __call__(self, principal: str) -> Any:
        got = await self.real(principal)
        if self.armed:
            self.armed = False
            self.started.set()
            await self.release.wait()
        return got


async def test_a_revoke_wins_over_a_grant_read_under_way(redis_url: str, prefix: str) -> None:
    """A check whose read of the grants began before a revoke in the same process
    neither caches the old grants nor hands them to the checks that come after it."""
    acm = AccessControlManager(redis_url, prefix=prefix, audit_key=KEY, cache_ttl=60_000)
    try:
        await acm.grant_access(principal_id="mallory", queue_pattern="acme-q", role="admin")
        slow = _SlowRead(acm)
        before = asyncio.create_task(acm.check_access("mallory", "acme-q", "can_manage_queue"))
        await asyncio.wait_for(slow.started.wait(), 10)  # Redis replied: the old grants
        assert await acm.revoke_access("mallory", "acme-q")
        after = asyncio.create_task(acm.check_access("mallory", "acme-q", "can_manage_queue"))
        await asyncio.sleep(0.05)
        slow.release.set()
        assert await before  # began before the revoke: may see the grant
        assert not await after, "a check after the revoke joined the read begun before it"
        assert not await acm.check_access("mallory", "acme-q", "can_manage_queue"), (
            "the grants read before the revoke were cached after it"
        )
    finally:
        await acm.close()


# ------------------------------------------------------------------ a tenant's Redis user
# What the isolation of a tenant's Redis user (redis_acl_rules on its own queues) covers
# and what it cannot: docs/tenancy.md "Isolation between tenants".
@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    srv = RedisServer().start()
    try:
        yield srv
    finally:
        srv.close()


def _tenant_user(server: RedisServer, prefix: str, queues: list[str]) -> str:
    admin = redis_sync.Redis(host="127.0.0.1", port=server.port)
    user, password = f"u{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    rules = redis_acl_rules(user, queues, prefix=prefix, features=["tenancy"])
    admin.execute_command("ACL", "SETUSER", *rules.setuser_args(password))
    admin.close()
    return f"redis://{user}:{password}@127.0.0.1:{server.port}/0"


@pytest.mark.redis_only
async def test_a_tenant_user_reaches_no_other_tenants_queue_but_rewrites_its_own_quota(
    server: RedisServer,
) -> None:
    prefix = f"kqr{uuid.uuid4().hex[:6]}"
    url = _tenant_user(server, prefix, ["acme-*"])
    admin_q = JobQueue("acme-orders", redis=server.url, prefix=prefix)
    other = JobQueue("acmex", redis=server.url, prefix=prefix)  # not acme-*: another tenant
    mine = JobQueue("acme-orders", redis=url, prefix=prefix)
    TenantRegistry.enable(mine)
    async with TenantRegistry(redis=server.url, prefix=prefix) as reg:
        try:
            await reg.create_tenant({"tenant_id": "acme", "quota": {"max_queue_size": 2}})
            await reg.attach(admin_q)
            secret = await other.add_job("x", {"card": "4111"})
            await mine.add_jobs([("x", {}, {"tenant_id": "acme"}) for _ in range(2)])
            with pytest.raises(QuotaExceededError):
                await mine.add_job("x", tenant_id="acme")
            raw = redis_async.Redis.from_url(url)
            try:
                # Another tenant's queue: refused, whatever the client.
                with pytest.raises(redis_exc.NoPermissionError):
                    await raw.hgetall(f"{prefix}:{{acmex}}:job:{secret}")
                with pytest.raises(redis_exc.ResponseError, match=r"permission|access"):
                    await raw.eval("return redis.call('del', KEYS[1])", 1,
                                   f"{prefix}:{{acmex}}:wait")  # fmt: skip
                # Its own quota copy lives in its own queue's keys: writable, and with a
                # version from the far future the registry's later copies are ignored.
                tkey = tk.tenant(mine.keys, "acme")
                await raw.hset(tkey, mapping={"mqs": 0, "v": 2**50})
            finally:
                await raw.aclose()
            await mine.add_job("x", tenant_id="acme")  # a third job: over the quota
            await reg.update_tenant("acme", quota={"max_queue_size": 1})
            await mine.add_job("x", tenant_id="acme")  # the new quota never arrived
            assert (await other.get_job_status(secret)) is not None
            # The repair the docs give: drop the copy's version, copy the registry again.
            fix = redis_async.Redis.from_url(server.url)
            try:
                await fix.hdel(tkey, "v")
            finally:
                await fix.aclose()
            await reg.sync()
            with pytest.raises(QuotaExceededError):
                await mine.add_job("x", tenant_id="acme")
            assert (await reg.get_tenant_usage("acme")).queued == 4  # counts kept
        finally:
            for q in (mine, admin_q, other):
                await q.close()


# ------------------------------------------------------------------ audit growth
async def test_repeated_refusals_are_written_up_to_the_bound_then_counted(
    redis_url: str, prefix: str
) -> None:
    """The bound docs/access-control.md states ("Growth under refusals"): a principal
    repeating a refused call adds its first 10 refusals of a 10 s window as entries, and
    the others as one count (``suppressed``), written when the window is summed up
    (here: when the manager closes), so the log no longer grows at the callers' rate and
    every refusal is accounted for. (A 10-minute window here: the test does not depend
    on how fast the 50 calls run.)"""
    defaults = AccessControlManager(redis_url, prefix=prefix, audit_key=KEY)
    assert (defaults.refusals.burst, defaults.refusals.window_ms) == (10, 10_000)
    await defaults.close()
    acm = AccessControlManager(redis_url, prefix=prefix, audit_key=KEY, refusal_window=600_000)
    q = acm.protect(JobQueue("acme-q", redis=redis_url, prefix=prefix, principal="viewer"))
    try:
        await acm.grant_access(principal_id="viewer", queue_pattern="acme-q", role="viewer")
        for _ in range(50):
            with pytest.raises(AccessDeniedError):
                await q.add_job("x", {})
        denied = await acm.query_audit_log(principal="viewer", outcome="denied", limit=1000)
        assert len(denied) == 10
    finally:
        await q.close()
        await acm.close()
    reader = AccessControlManager(redis_url, prefix=prefix, audit_key=KEY)
    try:
        denied = await reader.query_audit_log(principal="viewer", outcome="denied", limit=1000)
    finally:
        await reader.close()
    assert len(denied) == 11
    assert {e.action for e in denied} == {"access.denied"}
    assert denied[0].metadata["suppressed"] == 40  # newest first: the summary
