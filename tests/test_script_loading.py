"""Scripts are sent to a server only when it lacks them (``ScriptRegistry.load``).

Every queue, and every client of a queue (the shared one, the worker's blocking one),
sent all 20 scripts with ``SCRIPT LOAD`` (~450 KB) when it connected, though the
server already had them: 1,000 queues in one process sent 40,000, and each restart of a
worker all of them again. One ``SCRIPT EXISTS`` now says which are missing.
"""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from helpers import QueueFactory
from kitium_queue.scripts import SCRIPT_NAMES


async def _loads(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_script|load", {}).get("calls", 0))


@pytest.mark.redis_only
async def test_a_second_queue_sends_no_script_the_server_has(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    await redis_client.script_flush()
    first = make_queue("first")
    await first.get_stats()
    before = await _loads(redis_client)
    second = make_queue("second")  # the same features: the same scripts
    await second.add_job("t", {})
    await second.get_stats()
    assert await _loads(redis_client) == before
    # A server that lost them (SCRIPT FLUSH, a restart) is sent them again.
    await redis_client.script_flush()
    third = make_queue("third")
    await third.get_stats()
    assert await _loads(redis_client) == before + len(SCRIPT_NAMES)
    shas = [third.scripts.get(n).sha for n in SCRIPT_NAMES]
    assert all(await redis_client.script_exists(*shas))


def test_queues_of_one_process_share_each_composed_script(make_queue: QueueFactory) -> None:
    """Each queue kept its own copy of every composed script (~880 KB a queue: 1.1 GB
    for 1,000 queues); queues whose scripts compose the same now share one copy."""
    from kitium_queue.features.groups import FIFOQueueManager

    a, b, grouped = make_queue("a"), make_queue("b"), make_queue("g")
    FIFOQueueManager(grouped)
    for name in SCRIPT_NAMES:
        assert a.scripts.get(name) is b.scripts.get(name)
    assert grouped.scripts.get("claim").sha != a.scripts.get("claim").sha
    assert grouped.scripts.get("claim") is not a.scripts.get("claim")


def test_scripts_no_queue_uses_any_more_are_not_kept() -> None:
    """The shared copies are weak: scripts composed for settings since changed (a rate
    limit set 200 times: 401 scripts, 23 MiB, before) or for queues gone are freed."""
    import gc

    from kitium_queue import JobQueue
    from kitium_queue.scripts import _SHARED

    q = JobQueue("gone", redis="memory://")
    before = len(_SHARED)
    for n in range(1, 30):
        q.set_rate_limit("k", max=n, duration=1000)
        q.scripts.get("claim")
    gc.collect()
    assert len(_SHARED) <= before + 2
    del q
    gc.collect()
    assert len(_SHARED) <= before
