"""The embedded ``memory://`` backend answers the queue's scripts as Redis does where
they look at errors (``kitium_queue.memorystore``): ``redis.pcall`` error tables hold a
Lua string, and ``error(<error table>)`` ends a script with that table's message."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis

from kitium_queue import JobQueue
from kitium_queue.connection import ConnectionFactory
from kitium_queue.errors import DamagedKeyError

_PCALL_ERR_TYPE = (
    "redis.call('SET', KEYS[1], 'x') "
    "local r = redis.pcall('HSET', KEYS[1], 'a', 'b') "
    "return {type(r.err), string.sub(r.err, 1, 9)}"
)
_RAISED_TABLE = "error(redis.error_reply('KQ_DAMAGED_KEY string hash ' .. KEYS[1]))"
_RAISED_PCALL_ERROR = (
    "redis.call('SET', KEYS[1], 'x') local r = redis.pcall('HSET', KEYS[1], 'a', 'b') error(r)"
)
_CAUGHT_THEN_RETURNED = (
    "local ok, e = pcall(function() error(redis.error_reply('KQ_X inner')) end) "
    "local text = type(e) == 'table' and e.err or tostring(e) "
    "return {tostring(ok), text}"
)


async def _answer(client: Any, script: str, key: str) -> Any:
    try:
        return await client.eval(script, 1, key)
    except Exception as exc:
        # Redis adds " script: <sha>, on @user_script:1." to a script's error reply.
        return f"{type(exc).__name__}: {str(exc).split(' script: ')[0]}"


@pytest.mark.parametrize(
    "script", [_PCALL_ERR_TYPE, _RAISED_TABLE, _RAISED_PCALL_ERROR, _CAUGHT_THEN_RETURNED]
)
async def test_script_errors_read_and_raised_as_on_redis(redis_url: str, script: str) -> None:
    key = f"kqreview:{uuid.uuid4().hex}"
    real = aioredis.Redis.from_url(redis_url)
    memory = ConnectionFactory(f"memory://{uuid.uuid4().hex}").client()
    try:
        expected = await _answer(real, script, key)
        assert await _answer(memory, script, key) == expected
    finally:
        await real.delete(key)
        await real.aclose()
        await memory.aclose()


async def test_a_damaged_id_counter_is_reported_on_every_backend(backend_url: str) -> None:
    prefix = f"kqr{uuid.uuid4().hex[:8]}"
    queue = JobQueue("dmg", redis=backend_url, prefix=prefix)
    try:
        await queue.add_job("t", {})
        client = await queue.client()
        await client.set(f"{prefix}:{{dmg}}:id", "x")
        before = sorted(await client.keys(f"{prefix}:*"))
        with pytest.raises(DamagedKeyError, match="not an integer"):
            await queue.add_job("t", {})
        assert sorted(await client.keys(f"{prefix}:*")) == before
        await client.delete(*before)
    finally:
        await queue.close()
