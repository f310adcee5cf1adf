"""A claim reply older than the waker's must not undo the waker's wake-up.

An idle worker's pump lane sends the round that records a finished job's outcome and
claims again; that claim finds nothing. A delayed job is added right after (its marker
wakes the waker, whose claim sees the job and makes the waker's next wait end at its due
time). When the lane's older reply is handled after the waker's, it said "nothing due
at all": the job must still start at its due time, not after the idle worker's 5 s
fallback wait.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from helpers import EventLog, QueueFactory, wait_until


async def test_a_stale_lane_claim_reply_does_not_undo_a_delayed_jobs_wake_up(
    make_queue: QueueFactory,
) -> None:
    q = make_queue()
    log = EventLog(q, ["job-started"])
    q.process("n", lambda job: None)
    await q.start()
    worker = q.worker
    assert worker is not None
    await asyncio.sleep(0.05)  # idle: the waker waits on the marker

    real = q.scripts.pipeline
    armed = True
    added: dict[str, Any] = {}

    async def pipeline(client: Any, calls: Any) -> list[Any]:
        nonlocal armed
        replies = await real(client, calls)
        claims = [c for c in calls if getattr(c, "script", None) == "claim"]
        if armed and claims and len(calls) >= 2:  # an outcome and a claim: the round
            armed = False
            # Redis ran this round's claim (nothing due); now a delayed job arrives and
            # the waker's claim sees it, before this lane handles its own older reply.
            added["t0"] = time.monotonic()
            added["id"] = await q.add_job("n", delay=200)
            deadline = time.monotonic() + 3
            while worker._block_s > 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            added["waker_saw_it"] = worker._block_s <= 1
        return replies

    q.scripts.pipeline = pipeline  # type: ignore[method-assign]
    first = await q.add_job("n")
    await wait_until(lambda: log.of("job-started", first), 5)
    await wait_until(lambda: "waker_saw_it" in added, 5)
    assert added["waker_saw_it"], "the waker's claim did not see the delayed job"
    jid = added["id"]
    await wait_until(lambda: log.of("job-started", jid), 10)
    elapsed = log.times("job-started", jid)[0] - added["t0"]
    # Woken at its due time (~200 ms); a lost wake-up shows as the 5 s fallback wait.
    assert 0.195 <= elapsed < 2.5, f"a 200 ms delay started after {elapsed * 1000:.0f} ms"
