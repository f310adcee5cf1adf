"""The workers' heal of FIFO groups is paced: a step's Redis work is bounded whatever the
number of groups, and a stale turn is still given back within ``pass_bound_s``.

Before the pacing, each walk of the workers went over every group at once: about four
commands per group holding a turn (500,000 commands every 30 s at 100,000 groups). The
walk is driven here step by step (``HealWalk.step``, what the workers run every
``TICK_S``); the bound is counted in steps and Redis commands, never in wall-clock time.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from helpers import QueueFactory
from kitium_queue import JobQueue, JobStatus
from kitium_queue.features.groups import FIFOQueueManager
from kitium_queue.features.groups.heal import HealWalk, pass_bound_s

PAGE, CALLS = 50, 2


async def _status(q: JobQueue, job_id: str) -> JobStatus | None:
    info = await q.get_job_status(job_id)
    return None if info is None else info.status


async def _healthy(q: JobQueue, n: int, tag: str = "h") -> None:
    """``n`` groups of one job each: each job holds its group's turn, in wait."""
    for start in range(0, n, 500):
        await q.add_jobs(
            [
                ("n", {}, {"message_group_id": f"{tag}{i:05d}"})
                for i in range(start, min(n, start + 500))
            ]
        )


async def _commands(client: Any) -> tuple[int, int]:
    """(script calls, commands) the server ran so far (``INFO commandstats``)."""
    stats = await client.info("commandstats")
    scripts = sum(v["calls"] for k, v in stats.items() if k[8:] in ("evalsha", "eval", "fcall"))
    return scripts, sum(v["calls"] for k, v in stats.items() if k.startswith("cmdstat_"))


async def test_a_stale_turn_among_many_healthy_groups_is_given_back_within_the_bound(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("hp1")
    FIFOQueueManager(q)
    groups = 600
    await _healthy(q, groups)
    # Group h00010 also has a job in its line, behind the job holding its turn.
    second = await q.add_job("n", {}, message_group_id="h00010")
    assert await _status(q, second) is JobStatus.PENDING
    walk = HealWalk(q, interval_s=0, calls_per_tick=CALLS, page=PAGE)
    # The worst case: the turn goes stale just after the pass under way walked its group.
    assert await walk.step() is None
    assert walk.cursor > "h00010"
    client = await q.client()
    head = await client.smembers(q.keys.extra("grp-run:h00010"))
    assert len(head) == 1
    await client.delete(q.keys.job(next(iter(head)).decode()))  # the record deleted by hand
    steps = 1
    while await _status(q, second) is JobStatus.PENDING and steps < 100:
        await walk.step()
        steps += 1
    assert await _status(q, second) is JobStatus.WAITING
    # The documented bound, in steps of one (simulated) second each: the rest of the
    # pass, the next pass's start (interval 0 here) and that pass up to the group.
    bound = pass_bound_s(
        groups + 1, groups + 1, interval_s=0, tick_s=1, calls_per_tick=CALLS, page=PAGE
    )
    per_pass = math.ceil(((groups + 1) // PAGE + 1) / CALLS)
    assert per_pass < steps <= bound, (steps, bound)
    assert walk.passes >= 1


@pytest.mark.redis_only
async def test_one_step_does_bounded_redis_work_whatever_the_number_of_groups(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("hp2")
    FIFOQueueManager(q)
    client = await q.client()
    await FIFOQueueManager.for_queue(q).heal()  # the script loaded: EVALSHA from here on
    seen: list[tuple[int, int]] = []
    for total in (300, 1500):
        await _healthy(q, total - (300 if seen else 0), "h" if not seen else "k")
        walk = HealWalk(q, interval_s=0, calls_per_tick=CALLS, page=PAGE)
        s0, c0 = await _commands(client)
        assert await walk.step() is None  # the pass goes on at the next step
        s1, c1 = await _commands(client)
        seen.append((s1 - s0, c1 - c0 - 1))  # minus the INFO that read the counts
        steps = 1
        while walk.cursor:
            await walk.step()
            steps += 1
        assert steps == math.ceil((total // PAGE + 1) / CALLS)
    for scripts, commands in seen:
        # Two script calls; per call about 5 commands of its own and 4 per group
        # holding one turn (SCARD, HMGET of the group, SMEMBERS, HMGET of the holder).
        assert scripts == CALLS
        assert commands <= CALLS * (PAGE * 4 + 10), seen
    assert abs(seen[0][1] - seen[1][1]) <= 4, seen


@pytest.mark.redis_only
async def test_a_call_stops_after_its_turn_holder_budget(make_queue: QueueFactory) -> None:
    q = make_queue("hp3")
    FIFOQueueManager(q, group_concurrency=60)
    for g in range(5):
        await q.add_jobs([("n", {}, {"message_group_id": f"w{g}"}) for _ in range(60)])
    client = await q.client()
    await FIFOQueueManager.for_queue(q).heal()  # the script loaded: EVALSHA from here on
    walk = HealWalk(q, interval_s=0, calls_per_tick=1, page=PAGE, per_call=100)
    s0, c0 = await _commands(client)
    await walk.step()
    s1, c1 = await _commands(client)
    # 60 holders of w0, then w1 reaches the budget: the call ends after w1.
    assert walk.cursor == "w1"
    assert (s1 - s0, c1 - c0 - 1) <= (1, 2 * (60 + 3) + 10)
    await walk.step()
    assert walk.cursor == "w3"
    await walk.step()
    assert walk.cursor == ""
