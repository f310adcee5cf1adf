"""Multi-tenancy with a Redis ACL user limited to its queue's keys.

The queue's scripts need, besides the core list of docs/RELIABILITY.md, the set commands
``+sadd +srem +scard +srandmember +sismember`` and ``+zscore``. Such a user may not read
the registry's keys (``<prefix>:tenants*``, outside every queue's hash tag): the queue
then takes its tenants' quotas from the registry's own writes (an administrator's
``TenantRegistry.attach(queue)``), logs once that it cannot read the registry, and
enforces every quota as usual.
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
from kitium_queue.features.tenancy import TenantRegistry

pytestmark = [pytest.mark.redis_only]

CORE = (
    "ping", "script|load", "evalsha", "eval", "hgetall", "hget", "lrange", "zrange",
    "zrevrange", "bzpopmin", "zadd", "xread", "subscribe", "time", "get", "set", "incr",
    "incrby", "pexpire", "pttl", "del", "exists", "type", "hset", "hmget", "hdel",
    "hincrby", "hexists", "rpush", "ltrim", "zrem", "zcard", "zrangebyscore", "xadd",
    "publish", "info",
)  # fmt: skip
TENANCY = ("sadd", "srem", "scard", "srandmember", "sismember", "zscore")


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
    admin.execute_command(
        "ACL", "SETUSER", user, "reset", "on", f">{password}", f"~{prefix}:{{aq}}:*",
        "resetchannels", f"&{prefix}:{{aq}}:*", "-@all",
        *(f"+{c}" for c in CORE + TENANCY))
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
    denied = {e["object"] for e in admin.acl_log() if e.get("object") != "client|setinfo"}
    # Only the registry's keys were refused: no command the scripts call is missing.
    assert denied and all(str(o).startswith(f"{prefix}:tenants") for o in denied), denied
    admin.close()


async def _idle(reg: TenantRegistry) -> bool:
    u = await reg.get_tenant_usage("t")
    return u.completed == 5 and u.active == 0 and u.queued == 0
