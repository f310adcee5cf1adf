"""The whole keyspace of a test's prefix, read raw: for tests that prove data is gone.

* ``raw_keyspace(client, prefix)``: every key with its whole content read by type (key
  name included) and its ``DUMP`` appended, as one bytes blob per key;
* ``holding(space, marker)``: the keys whose blob contains ``marker``;
* fixture ``uncompressed_dump``: turns off RDB compression while the test runs, so a
  value shows in ``DUMP`` as it is (LZF would hide it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

__all__ = ["holding", "raw_keyspace", "uncompressed_dump"]


async def raw_keyspace(client: aioredis.Redis, prefix: str) -> dict[bytes, bytes]:
    """Every key of ``prefix`` with its whole content read by type, as one bytes blob
    (key name included), and its DUMP (uncompressed) appended."""
    out: dict[bytes, bytes] = {}
    async for key in client.scan_iter(match=f"{prefix}*", count=1000):
        kind = (await client.type(key)).decode()
        parts: list[bytes] = [key]
        if kind == "string":
            parts.append(await client.get(key) or b"")
        elif kind == "hash":
            for k, v in (await client.hgetall(key)).items():
                parts += [k, v]
        elif kind == "list":
            parts += await client.lrange(key, 0, -1)
        elif kind == "set":
            parts += list(await client.smembers(key))
        elif kind == "zset":
            parts += [m for m, _ in await client.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            for eid, fields in await client.xrange(key):
                parts.append(eid)
                for k, v in fields.items():
                    parts += [k, v]
        dumped = await client.dump(key)
        if dumped:
            parts.append(dumped)
        out[key] = b"\n".join(parts)
    return out


def holding(space: dict[bytes, bytes], marker: str) -> list[bytes]:
    needle = marker.encode()
    return sorted(k for k, blob in space.items() if needle in blob)


@pytest.fixture
async def uncompressed_dump(redis_client: aioredis.Redis) -> AsyncIterator[None]:
    """DUMP without LZF, so a marker in a value shows in the dump as it is."""
    old = (await redis_client.config_get("rdbcompression"))["rdbcompression"]
    await redis_client.config_set("rdbcompression", "no")
    yield
    await redis_client.config_set("rdbcompression", old)
