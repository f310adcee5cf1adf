"""The lifo field of schedules and workflow steps across releases.

``job_id_window=False`` travels to enqueue.lua as an ``n`` after the lifo flag
(``'0n'`` / ``'1n'``). Schedules store that field for schedule_fire.lua, whichever
release's scheduler fires the tick, and workflows hand it to wf_create.lua: both read
``'1'`` alone as lifo, so the ``n`` must not reach them. A schedule's stored options are
read back by every release's ``update_schedule``: a release before ``job_id_window``
refuses a schedule whose options name it, so schedules refuse the option (a tick's id
holds no window anyway).
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from helpers import QueueFactory
from kitium_queue import ConfigurationError, JobChainManager, JobQueue, WorkflowStep
from kitium_queue.features import schedules
from kitium_queue.features.scheduler import Scheduler

# Far ahead of the real clock: ticks fire only when run_due() is told it is time.
T0 = 4_102_444_800_000


async def _q_score(q: JobQueue, job_id: str) -> int:
    """The job's order within its priority (negative: lifo, lib_add.lua)."""
    client = await q.client()
    return int(await client.hget(q.keys.job(job_id), "q"))


async def test_schedule_keeps_lifo_with_windowless_default_ids(make_queue: QueueFactory) -> None:
    q = make_queue(default_job_options={"job_id_window": False})
    s = await q.schedule_every("beat", {"n": 1}, 1000, start_date=T0, lifo=True)
    client = await q.client()
    # What the scheduler of either release reads: '1n' was not lifo to schedule_fire.lua.
    assert await client.hget(q.keys.schedule(s.id), "l") == b"1"
    sch = Scheduler(rng=random.Random(1))
    sch.queue = q
    await sch.run_due(T0)
    assert await _q_score(q, f"sched:{s.id}:{T0}") < 0


async def test_schedule_refuses_job_id_window(make_queue: QueueFactory) -> None:
    q = make_queue()
    for value in (False, True):
        with pytest.raises(ConfigurationError, match="job_id_window"):
            await q.schedule_every("beat", None, 1000, start_date=T0, job_id_window=value)
    assert await q.get_schedules() == []


async def test_update_drops_a_stored_job_id_window(
    make_queue: QueueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = make_queue()
    # A schedule written while schedules took the option (its stored options name it).
    with monkeypatch.context() as m:
        m.setattr(schedules, "_RESERVED_JOB_OPTIONS", ("job_id", "delay", "idempotency_key"))
        s = await q.schedule_every(
            "beat", None, 1000, start_date=T0, job_id_window=False, lifo=True
        )
    assert s.options.get("job_id_window") is False
    got = await q.update_schedule(s.id, priority=3)
    assert got.options == {"lifo": True, "priority": 3}
    client = await q.client()
    assert await client.hget(q.keys.schedule(s.id), "l") == b"1"


@pytest.mark.parametrize("where", ["defaults", "step"])
async def test_workflow_step_keeps_lifo_without_window(
    make_queue: QueueFactory, where: str
) -> None:
    opts: dict[str, Any] = {"lifo": True}
    defaults: dict[str, Any] = {}
    if where == "defaults":
        defaults["job_id_window"] = False
    else:
        opts["job_id_window"] = False
    q = make_queue(default_job_options=defaults)
    chains = JobChainManager(q)
    await q.add_job("s", {"n": 0})
    await chains.execute_workflow("w1", [WorkflowStep("a", "s", {"n": 1}, options=opts)])
    assert await _q_score(q, "w1:a") < 0
