"""Two regions of one global queue on private ``redis-server`` processes, for the tests
of features across regions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from _redis import RedisServer
from kitium_queue.features.regions import GlobalQueueManager

US, EU = "us", "eu"


@asynccontextmanager
async def region_pair(
    port: int, name: str, timeout_ms: int, **extra: Any
) -> AsyncIterator[tuple[GlobalQueueManager, list[RedisServer]]]:
    """A manager over ``US`` (the primary) and ``EU`` on servers at ``port`` and
    ``port + 1``, replication without lingering; ``extra``: more of the configuration."""
    servers = [RedisServer(port=port + i).start() for i in range(2)]
    m = GlobalQueueManager()
    try:
        await m.initialize(
            {
                "name": name,
                "regions": [
                    {"region": US, "redis": servers[0].url, "is_primary": True},
                    {"region": EU, "redis": servers[1].url, "priority": 1},
                ],
                "replication": {"enabled": True, "linger_ms": 0},
                "failover": {"enabled": True, "timeout_ms": timeout_ms},
                **extra,
            }
        )
        yield m, servers
    finally:
        await m.close()
        for s in servers:
            s.close()
