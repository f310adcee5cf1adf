"""An idle worker claims once per wake-up wait, not once more from each pump lane.

The waker's ``BZPOPMIN`` carries a claim that runs when the wait times out. When a claim
said nothing is due at all (no delayed job, lease deadline or limiter window), each lane
still claimed again as its own 5 s wait ran out, in the same millisecond as the waker's:
two claims per idle period where one does (11 claims per 6 waits measured; about 40 % of
an idle fleet's core script calls).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from helpers import QueueFactory
from kitium_queue import worker as worker_module


@pytest.mark.redis_only  # memory:// has no claim riding on the wait: its lanes claim
async def test_an_idle_worker_claims_once_per_wait(
    make_queue: QueueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_module, "_MAX_IDLE_S", 0.25)
    q = make_queue("idle-claims", worker={"concurrency": 4})
    claims: list[int] = []
    real = q.call

    def counted(script: str, args: Any = ()) -> Any:
        if script == "claim":
            claims.append(1)
        return real(script, args)

    q.call = counted  # type: ignore[method-assign]

    @q.process("n")
    async def n(job: Any) -> None:
        return None

    await q.start()
    await asyncio.sleep(0.5)  # the first claims of a starting worker
    before = len(claims)
    await asyncio.sleep(2.5)  # ten waits of 0.25 s
    idle = len(claims) - before
    assert idle <= 13, idle  # one claim per wait (two lanes besides: about 30)
    # Work still starts at once on its wake-up.
    job = await q.add_job("n", {})
    for _ in range(100):
        info = await q.get_job_status(job)
        if info is not None and info.status.value == "completed":
            break
        await asyncio.sleep(0.02)
    assert info is not None and info.status.value == "completed"
