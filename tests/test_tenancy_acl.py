"""Multi-tenancy with a Redis ACL user limited to its queue's keys.

The user's rules are the ones ``kitium-queue acl redis-rules --feature tenancy`` writes
(``redis_acl_rules``): the engine's commands and the set commands of tenancy. Such a
user may not read the registry's keys (``<prefix>:{!access}:tenants*``, outside every
queue's hash tag): the queue then takes its tenants' quotas from the registry's own
writes (an administrator's ``TenantRegistry.attach(queue)``), logs once that it cannot
read the registry, and enforces every quota as usual.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_sync

from _redis import RedisServer
from helpers import wait_until
from kitium_queue import JobQueue
from kitium_queue.errors import QuotaExceededError
from kitium_queue.features.access.redisacl import FEATURE_COMMANDS, redis_acl_rules
from kitium_queue.features.tenancy import TenantRegistry
from kitium_queue.features.tenancy import keys as tk

pytestmark = [pytest.mark.redis_only]

@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    srv = RedisServer().start()
    try:
        yield srv
    finally:
        srv.close()


async def test_queue_user_without_registry_access(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    prefix, password = f"kqa{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    admin = redis_sync.Redis(host="127.0.0.1", port=server.port)
    user = f"u{uuid.uuid4().hex[:6]}"
    rules = redis_acl_rules(user, ["aq"], prefix=prefix, features=["tenancy"])
    admin.execute_command("ACL", "SETUSER", *rules.setuser_args(password))
    admin.execute_command("ACL", "LOG", "RESET")
    url = f"redis://{user}:{password}@127.0.0.1:{server.port}/0"
    q = JobQueue("aq", redis=url, prefix=prefix, settings={"max_stalled_interval": 200})
    TenantRegistry.enable(q)
    async with TenantRegistry(redis=server.url, prefix=prefix) as reg:
        await reg.create_tenant({"tenant_id": "t", "quota": {"max_queue_size": 5,
                                                             "max_concurrency": 1}})
        # The administrator registers the queue (the queue's user could not).
        await reg.attach(JobQueue("aq", redis=server.url, prefix=prefix))
        try:
            with caplog.at_level(logging.WARNING, "kitium_queue"):
                await q.add_jobs([("x", {}, {"tenant_id": "t"}) for _ in range(5)])
                with pytest.raises(QuotaExceededError):
                    await q.add_job("x", tenant_id="t")
                seen: list[str] = []

                async def run(job: Any) -> None:
                    seen.append(job.id)
                    await asyncio.sleep(0.01)

                q.process("x", run)
                await q.start(concurrency=3)
                await wait_until(lambda: len(seen) == 5, 10)
                await wait_until(lambda: _idle(reg), 10)
            warned = [r for r in caplog.records if "may not read the tenant registry" in
                      r.getMessage()]
            assert len(warned) == 1  # once, not per job or per sync
        finally:
            await q.close()
    log = [e for e in admin.acl_log() if e.get("object") != "client|setinfo"]
    keys = {str(e["object"]) for e in log if e.get("reason") == "key"}
    commands = {str(e["object"]) for e in log if e.get("reason") == "command"}
    # The registry's keys were refused, and no command of tenancy (nor another key).
    assert keys and all(k.startswith(tk.registry(prefix)) for k in keys), keys
    assert not commands & set(FEATURE_COMMANDS["tenancy"]), commands
    admin.close()


async def _idle(reg: TenantRegistry) -> bool:
    u = await reg.get_tenant_usage("t")
    return u.completed == 5 and u.active == 0 and u.queued == 0
