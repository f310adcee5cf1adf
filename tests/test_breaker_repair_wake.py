"""Idle workers are woken at once when a damaged or deleted breaker record lets go of the
jobs it held (real Redis).

A breaker that acts closed because its record is damaged (another Redis type, a state
that is no state) or gone holds nothing: what it held is let go by a read of it
(``get_stats``, ``list_breakers``: the CLI, the dashboard, the Prometheus collector), by
the ``breaker-events`` leader's sweep and by ``create_breaker(..., replace=True)``. Each
of them lets go through the same Lua step as closing (``cb_let_go`` in
``features/breakers/lua.py``), which puts the jobs back in wait and sets the wake-up
marker idle workers block on, in the same script call. Without the marker an idle
worker would find them only at its next periodic look (``worker._MAX_IDLE_S``, 5 s; set
to 30 s here, so a missing wake-up fails the 5 s bound by a wide margin).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio

from helpers import QueueFactory, wait_until
from kitium_queue import CircuitBreakerManager, JobQueue
from kitium_queue import worker as worker_module
from kitium_queue.errors import BreakerNotFoundError
from kitium_queue.features.breakers import BreakerEvents

pytestmark = pytest.mark.redis_only

#: An idle worker's periodic look, widened from 5 s: only a wake-up starts a job sooner.
IDLE_S = 30.0
#: How soon after the repair every held job must have started (generous for a loaded
#: machine; measured: about 2 ms for one job, under 0.1 s for 150).
BOUND_S = 5.0

Repair = Callable[[JobQueue, CircuitBreakerManager, redis.asyncio.Redis], Awaitable[None]]


async def _damage(client: redis.asyncio.Redis, key: str) -> None:
    await client.delete(key)
    await client.set(key, "written by hand")


async def _read_damaged(q: JobQueue, m: CircuitBreakerManager, r: redis.asyncio.Redis) -> None:
    await _damage(r, q.keys.extra("cb:b:dep"))
    st = await m.get_stats("dep")
    assert "holds another Redis type" in st.damaged


async def _read_no_state(q: JobQueue, m: CircuitBreakerManager, r: redis.asyncio.Redis) -> None:
    await r.hset(q.keys.extra("cb:b:dep"), "st", "opened")  # read as closed
    st = await m.get_stats("dep")
    assert "st" in st.damaged


async def _read_deleted(q: JobQueue, m: CircuitBreakerManager, r: redis.asyncio.Redis) -> None:
    await r.delete(q.keys.extra("cb:b:dep"))
    with pytest.raises(BreakerNotFoundError):
        await m.get_stats("dep")


async def _list_deleted(q: JobQueue, m: CircuitBreakerManager, r: redis.asyncio.Redis) -> None:
    await r.delete(q.keys.extra("cb:b:dep"))
    assert await m.list_breakers() == []


async def _sweep_deleted(q: JobQueue, m: CircuitBreakerManager, r: redis.asyncio.Redis) -> None:
    await r.delete(q.keys.extra("cb:b:dep"))
    await BreakerEvents(q).sweep()


async def _sweep_damaged(q: JobQueue, m: CircuitBreakerManager, r: redis.asyncio.Redis) -> None:
    await _damage(r, q.keys.extra("cb:b:dep"))
    await BreakerEvents(q).sweep()


async def _replace_damaged(q: JobQueue, m: CircuitBreakerManager, r: redis.asyncio.Redis) -> None:
    await _damage(r, q.keys.extra("cb:b:dep"))
    await m.create_breaker({"id": "dep", "job_name": "j"}, replace=True)


REPAIRS: dict[str, Repair] = {
    "read-damaged": _read_damaged,
    "read-no-state": _read_no_state,
    "read-deleted": _read_deleted,
    "list-deleted": _list_deleted,
    "sweep-deleted": _sweep_deleted,
    "sweep-damaged": _sweep_damaged,
    "replace-damaged": _replace_damaged,
}


async def _idle_with_held(
    make_queue: QueueFactory, client: redis.asyncio.Redis, n: int
) -> tuple[JobQueue, CircuitBreakerManager, list[float]]:
    """A worker gone idle on its wake-up wait, with ``n`` jobs held by the open breaker
    ``dep`` (open for an hour: neither its timer nor a timeout lets them go)."""
    q = make_queue("q", worker={"concurrency": 4, "scheduler": False}, retry={"max_attempts": 1})
    m = CircuitBreakerManager(q, events=False)
    await m.create_breaker({"id": "dep", "job_name": "j"})
    await m.force_open("dep", 3_600_000)
    started: list[float] = []

    async def run(job: Any) -> str:
        started.append(time.monotonic())
        return "ok"

    q.process("j", run)
    await q.add_jobs([("j", {}) for _ in range(n)])
    await q.start()
    parked = q.keys.parked("cb:dep")

    async def all_held() -> bool:
        return int(await client.zcard(parked)) == n

    await wait_until(all_held, timeout=10)
    await asyncio.sleep(0.3)  # the claim that held them answered: the worker waits
    assert started == []
    return q, m, started


@pytest.mark.parametrize("repair", list(REPAIRS))
async def test_a_repair_wakes_an_idle_worker_for_the_jobs_it_lets_go(
    make_queue: QueueFactory,
    redis_client: redis.asyncio.Redis,
    monkeypatch: pytest.MonkeyPatch,
    repair: str,
) -> None:
    monkeypatch.setattr(worker_module, "_MAX_IDLE_S", IDLE_S)
    q, m, started = await _idle_with_held(make_queue, redis_client, 1)
    t0 = time.monotonic()
    await REPAIRS[repair](q, m, redis_client)
    await wait_until(
        lambda: started,
        timeout=BOUND_S,
        message=f"the held job did not start within {BOUND_S} s of the repair ({repair})",
    )
    assert started[0] - t0 < BOUND_S


@pytest.mark.parametrize("repair", ["read-damaged", "sweep-deleted"])
async def test_more_held_jobs_than_one_batch_all_start_at_once(
    make_queue: QueueFactory,
    redis_client: redis.asyncio.Redis,
    monkeypatch: pytest.MonkeyPatch,
    repair: str,
) -> None:
    """150 held: 100 go back at once and a timer due now brings the rest, served by the
    claims the wake-up sets off."""
    monkeypatch.setattr(worker_module, "_MAX_IDLE_S", IDLE_S)
    q, m, started = await _idle_with_held(make_queue, redis_client, 150)
    t0 = time.monotonic()
    await REPAIRS[repair](q, m, redis_client)
    await wait_until(
        lambda: len(started) == 150,
        timeout=BOUND_S,
        message=lambda: f"{len(started)} of 150 held jobs started within {BOUND_S} s",
    )
    assert max(started) - t0 < BOUND_S
