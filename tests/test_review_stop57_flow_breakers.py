"""Flow control and circuit breakers, reviewed as a user guarding a fragile payment API.

* A concurrency cap raised at run time (``set_concurrency_limit`` again, with a larger
  cap) while the key's jobs are parked: they follow the new cap at once, as a rate limit
  changed at run time does, instead of one per finished job until the workers' heal
  30 s later.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from helpers import QueueFactory, wait_until

pytestmark = [pytest.mark.redis_only]


async def test_a_concurrency_cap_raised_at_run_time_lets_the_parked_jobs_in(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("cc", worker={"concurrency": 10, "scheduler": False})
    q.set_concurrency_limit("pay", 1)
    running: list[str] = []
    gate = asyncio.Event()

    async def charge(job: Any) -> None:
        running.append(job.id)
        await gate.wait()

    q.process("charge", charge)
    await q.add_jobs([("charge", {}, {"concurrency_key": "pay"}) for _ in range(12)])
    await q.start()
    try:
        await wait_until(lambda: len(running) == 1, 20)
        client = await q.client()
        await wait_until(
            lambda: _zcard(client, q.keys.extra("parked:cc:pay"), 11), 20, interval=0.05
        )
        q.set_concurrency_limit("pay", 5)  # the API's owner allows five at once now
        # Nothing finishes meanwhile: only the change itself can let four more in.
        await wait_until(lambda: len(running) == 5, 15, message=lambda: f"{len(running)} running")
        await asyncio.sleep(0.3)
        assert len(running) == 5  # the new cap, not more
    finally:
        gate.set()


async def _zcard(client: Any, key: str, n: int) -> bool:
    return int(await client.zcard(key)) == n
