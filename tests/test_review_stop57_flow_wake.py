"""A rate limit raised or removed at run time wakes the idle workers at once.

Jobs held back by a key's rate limit stay in ``wait`` (up to ``flowpark.HELD_MAX`` per
claim, not parked), and the idle workers sleep until the key's window ends, at most the
worker's periodic re-check (``worker._MAX_IDLE_S``, 5 s). The walk that follows a change
of the limits (``flowpark.follow_limits``) woke them only when it armed a parked timer
again, so with none parked the jobs waited for that re-check. The re-check is set to
60 s here, so only the change itself can start them within the test's wait.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from helpers import QueueFactory, wait_until
from kitium_queue import worker as worker_module
from kitium_queue.parking import parked_count

pytestmark = [pytest.mark.redis_only]

HOUR = 3_600_000
RECHECK_S = 60.0  # the workers' periodic re-check, made long
WITHIN_S = 20.0  # well before it


@pytest.mark.parametrize("change", ["raised", "removed"])
async def test_a_rate_limit_raised_at_run_time_wakes_the_idle_workers(
    make_queue: QueueFactory, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    assert worker_module._MAX_IDLE_S == 5.0  # the re-check this test stands in for
    monkeypatch.setattr(worker_module, "_MAX_IDLE_S", RECHECK_S)
    q = make_queue("wake", worker={"concurrency": 4, "scheduler": False})
    q.set_rate_limit("api", max=1, duration=HOUR)
    seen: list[str] = []

    async def call(job: Any) -> None:
        seen.append(job.id)

    q.process("call", call)
    await q.add_jobs([("call", {}, {"rate_limit_key": "api"}) for _ in range(6)])
    await q.start()
    await wait_until(lambda: len(seen) == 1, 20, message=lambda: f"ran {len(seen)}")
    client = await q.client()
    # The other five are held back in wait, not parked; the workers go idle.
    assert int(await client.zcard(q.keys.wait)) == 5
    assert await parked_count(q) == 0
    await asyncio.sleep(1.0)
    assert len(seen) == 1

    if change == "raised":
        q.set_rate_limit("api", max=100, duration=HOUR)
    else:
        q.flow.remove_rate_limit("api")
    await wait_until(
        lambda: len(seen) == 6, WITHIN_S, interval=0.05, message=lambda: f"ran {len(seen)}"
    )
