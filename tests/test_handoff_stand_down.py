"""A worker whose every job is being handed on stands down until they come due.

A worker without FIFO groups (a previous release, during a rolling deploy) defers each
group job it claims for a live worker that has groups. The job holds its group's turn
while it waits in ``delayed``, and the deferring worker, the first to see it due (its own
claim reply named the moment), used to claim it back: the six jobs of a group went round
many times each (41 deferrals for 36 jobs, and a whole test over its 30 s in CI). Now a
worker that holds nothing but jobs it hands on claims nothing until they come due, and
passes its wake-ups on, so the worker with groups takes them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from helpers import QueueFactory, all_completed, wait_until
from kitium_queue import handoff
from kitium_queue.features.groups import FIFOQueueManager

#: Jobs per group: each one holds its group's turn while it is handed on.
_DEPTH = 12


async def test_group_jobs_are_handed_on_a_few_times_not_round_and_round(
    make_queue: QueueFactory,
) -> None:
    new = make_queue("sd-g", worker={"concurrency": 2})
    FIFOQueueManager(new)
    old = make_queue("sd-g", worker={"concurrency": 8})
    ran: list[tuple[int, int]] = []

    async def n(job: Any) -> None:
        ran.append((job.data["g"], job.data["i"]))
        await asyncio.sleep(0.005)

    async def never(job: Any) -> None:
        raise AssertionError("the worker without groups ran a group job")

    new.process("n", n)
    old.process("n", never)
    await new.start()
    await old.start()
    ids = await new.add_jobs(
        [
            ("n", {"g": g, "i": i}, {"message_group_id": f"g{g}"})
            for i in range(_DEPTH)
            for g in range(6)
        ]
    )
    await wait_until(lambda: all_completed(new, ids), 60)
    for g in range(6):
        assert [i for gg, i in ran if gg == g] == list(range(_DEPTH))
    assert old.worker is not None
    # Every outcome the old worker recorded is a deferral. Standing down, it hands on
    # about one job per group (its first claim takes the six heads at once: 4-6 in
    # every run); going round and round, it handed on many of the 72 jobs, some over
    # and over (41 of 36 in the run that failed CI).
    assert old.worker.processed <= 12, old.worker.processed


async def test_stand_down_only_when_every_held_job_is_handed_on(
    make_queue: QueueFactory, monkeypatch: Any
) -> None:
    q = make_queue("sd-unit")
    now = [100.0]
    running = [3]
    h = handoff.Handoff(q, "w1", clock=lambda: now[0], running=lambda: running[0])
    slept: list[float] = []

    async def no_sleep(s: float) -> None:
        slept.append(s)

    monkeypatch.setattr("kitium_queue.handoff.asyncio.sleep", no_sleep)
    # Three jobs held, this one handed on: the other two still run here.
    await h.hold("j1", "n", "w2")
    assert h.down_left() == 0.0 and h.holding == 0
    # One job held, and it is handed on: claim nothing until it comes due elsewhere.
    running[0] = 1
    await h.hold("j2", "n", "w2")
    assert h.down_left() == handoff.HOLD_S + handoff.AWAY_S_MAX
    assert slept == [handoff.HOLD_S, handoff.HOLD_S]
    # A longer stand-down under way (a feature every job needs) is kept.
    h.stand_down(10.0)
    await h.hold("j3", "n", "w2")
    assert h.down_left() == 10.0
    now[0] += 10.0
    assert h.down_left() == 0.0
