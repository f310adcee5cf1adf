"""A tenant's cap raised or lifted while its jobs wait in its lane: they start at once.

``update_tenant`` copies the new quota into each queue (``tn_put.lua``). Before the copy
refilled the lane, the jobs parked there behind the old ``max_concurrency`` came back
only when a running job of the tenant ended, or at the next worker sync's heal (up to
30 s later): 1 of 5 jobs had run 5 s after the cap went from 1 to 5. The copy now hands
the tenant's lane as many jobs as the new quota leaves room for, and wakes the workers.
A lowered cap stops nothing that runs and lets no more start than it allows.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from helpers import QueueFactory, wait_until
from kitium_queue import JobQueue
from kitium_queue.features.tenancy import TenantRegistry

pytestmark = pytest.mark.redis_only


class Gated:
    """A processor whose jobs run until their gate opens; it records who runs."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.running: set[str] = set()
        self.most = 0
        self.gate = asyncio.Event()

    async def __call__(self, job: Any) -> None:
        self.started[job.id] = time.monotonic()
        self.running.add(job.id)
        self.most = max(self.most, len(self.running))
        try:
            await self.gate.wait()
            await asyncio.sleep(0.05)  # runs a while even once the gate is open
        finally:
            self.running.discard(job.id)


async def _capped(
    make_queue: QueueFactory, name: str, cap: int, jobs: int, fair: bool
) -> tuple[JobQueue, TenantRegistry, Gated, list[str]]:
    """``jobs`` jobs of tenant acme (max_concurrency ``cap``): ``cap`` of them run on the
    gate, the others wait in the tenant's lane."""
    q = make_queue(name, worker={"concurrency": 20})
    reg = TenantRegistry(q, fair_dispatch=fair)
    await reg.create_tenant({"tenant_id": "acme", "quota": {"max_concurrency": cap}})
    gated = Gated()
    q.process("n")(gated)
    ids = await q.add_jobs([("n", {"i": i}, {"tenant_id": "acme"}) for i in range(jobs)])
    await q.start()
    await wait_until(lambda: len(gated.started) == cap, 5)
    await asyncio.sleep(0.3)  # nothing more starts: the others are held by the cap
    assert len(gated.started) == cap
    usage = await reg.get_tenant_usage("acme")
    assert (usage.active, usage.held) == (cap, jobs - cap), usage
    return q, reg, gated, ids


@pytest.mark.parametrize("fair", [True, False], ids=["fair-dispatch", "quotas-only"])
@pytest.mark.parametrize("new_cap", [5, None], ids=["raised", "lifted"])
async def test_jobs_held_by_the_old_cap_start_at_once(
    make_queue: QueueFactory, fair: bool, new_cap: int | None
) -> None:
    _, reg, gated, _ = await _capped(make_queue, "lift", 1, 5, fair)
    t0 = time.monotonic()
    await reg.update_tenant("acme", quota={"max_concurrency": new_cap})
    # Not the worker sync's heal (every 30 s): the copy itself refilled the lane (the
    # bound leaves room for a loaded machine, far from the heal's 30 s).
    await wait_until(lambda: len(gated.started) == 5, 10)
    assert time.monotonic() - t0 < 10
    usage = await reg.get_tenant_usage("acme")
    assert (usage.active, usage.held) == (5, 0), usage
    gated.gate.set()
    await wait_until(lambda: not gated.running, 5)


@pytest.mark.parametrize("fair", [True, False], ids=["fair-dispatch", "quotas-only"])
async def test_a_raise_admits_no_more_than_the_new_cap(
    make_queue: QueueFactory, fair: bool
) -> None:
    _, reg, gated, _ = await _capped(make_queue, "part", 1, 8, fair)
    await reg.update_tenant("acme", quota={"max_concurrency": 3})
    await wait_until(lambda: len(gated.started) == 3, 10)
    await asyncio.sleep(0.3)
    assert len(gated.started) == 3 and gated.most == 3
    usage = await reg.get_tenant_usage("acme")
    assert (usage.active, usage.held) == (3, 5), usage
    gated.gate.set()
    await wait_until(lambda: len(gated.started) == 8 and not gated.running, 5)
    assert gated.most == 3


@pytest.mark.parametrize("fair", [True, False], ids=["fair-dispatch", "quotas-only"])
async def test_a_lowered_cap_stops_nothing_and_admits_no_more(
    make_queue: QueueFactory, fair: bool
) -> None:
    _, reg, gated, ids = await _capped(make_queue, "lower", 3, 6, fair)
    await reg.update_tenant("acme", quota={"max_concurrency": 1})
    await asyncio.sleep(0.3)
    # The three running go on (none parked again), none of the lane starts.
    assert len(gated.started) == 3 and gated.running == set(gated.started)
    usage = await reg.get_tenant_usage("acme")
    assert (usage.active, usage.held) == (3, 3), usage
    # Then one at a time, under the lowered cap.
    gated.most = 0
    gated.gate.set()
    await wait_until(lambda: len(gated.started) == 6 and not gated.running, 5)
    assert gated.most == 1
    assert set(gated.started) == set(ids)
