"""An idle worker's webhook retry loop does not poll Redis several times a second.

Before, every process with a ``WebhookManager`` ran the retry claim script every
``poll_ms`` (250 ms: 4 script runs a second) for as long as it lived, with nothing
scheduled: in a fleet of 60 idle workers, more than half of all commands. Idle, it now
sleeps until the earliest retry is due, at most 2 s (or 80 % of the first retry delay).
"""

from __future__ import annotations

import asyncio
from typing import Any

from helpers import QueueFactory
from kitium_queue.features.webhooks import WebhookManager


async def test_an_idle_retry_loop_sleeps_until_a_retry_can_be_due(make_queue: QueueFactory) -> None:
    q = make_queue("wh-idle")
    m = WebhookManager(q)
    calls: list[int] = []
    real = m.service.retry_once

    async def counted() -> int:
        calls.append(1)
        return await real()

    m.service.retry_once = counted  # type: ignore[method-assign]

    @q.process("n")
    async def n(job: Any) -> None:
        return None

    await q.start()
    await asyncio.sleep(3.0)
    # 3 s idle: at most two sleeps of 2 s, plus the first call (4 a second before: 12).
    assert 1 <= len(calls) <= 3, len(calls)
    assert await m.service.idle_wait() == 2.0  # nothing scheduled: the cap
