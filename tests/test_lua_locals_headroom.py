"""Lua (5.1, in Redis) allows 200 local variables in one function, the main chunk of a
script included. A composed script's main chunk holds its own locals, its fragments'
and, for a feature's own scripts, the feature's prelude: a queue with every feature
(the advanced configuration's full example) is the most crowded. An edit that adds a
few top-level locals there made Redis refuse the script at its first call ("main
function has more than 200 local variables"), which only a test running that one
combination noticed. This keeps room for more: every script such a queue composes must
still compile with ``HEADROOM`` more top-level locals."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from kitium_queue import JobQueue
from kitium_queue.scripts import SCRIPT_NAMES
from test_advanced_config import brief_example

pytestmark = pytest.mark.redis_only

#: Top-level locals every composed script must still have room for.
HEADROOM = 5


async def test_every_script_of_an_every_feature_queue_has_room_for_more_locals(
    redis_url: str, prefix: str, redis_client: aioredis.Redis
) -> None:
    q = JobQueue("locals", redis=redis_url, prefix=prefix, advanced=brief_example())
    try:
        await q.client()  # composes and loads what it runs
        names = list(SCRIPT_NAMES) + sorted(set(q.scripts._fragments) - set(SCRIPT_NAMES))
        crowded: list[str] = []
        checked = 0
        for name in names:
            source = q.scripts.get(name).source
            extra = "".join(f"local __headroom{i} = {i}\n" for i in range(HEADROOM))
            try:
                await redis_client.script_load(source)
            except ResponseError:
                continue  # a fragment that is no script of its own
            checked += 1
            try:
                await redis_client.script_load(extra + source)
            except ResponseError as exc:
                assert "local variables" in str(exc), (name, str(exc)[:200])
                crowded.append(name)
        assert checked >= len(SCRIPT_NAMES) + 4  # the engine's and the features' own
        assert not crowded, (
            f"scripts with fewer than {HEADROOM} top-level locals to spare: {crowded}; "
            "put new locals in a function or a do-block, or fold constants into literals"
        )
    finally:
        await q.close()
