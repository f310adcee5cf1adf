"""Leaderless scheduling across real worker processes: every worker runs the scheduler,
each tick is enqueued exactly once, and a SIGKILLed scheduler loses no tick.

Workers are ``tests/workers/flow_worker.py`` subprocesses (``sys.executable``); each run
is recorded in ``<prefix>:runs``. Which ticks were enqueued is read from the queue's
durable event stream (``schedule-fired``, written by the fire script itself).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from helpers import wait_until
from kitium_queue import JobQueue, JobStatus
from workers.procs import WorkerProcs

pytestmark = pytest.mark.redis_only


@pytest.fixture
async def procs(redis_url: str, prefix: str, tmp_path: Path) -> AsyncIterator[WorkerProcs]:
    wp = WorkerProcs(redis_url, prefix, "sched", tmp_path)
    try:
        yield wp
    finally:
        await wp.close()


async def _fired(q: JobQueue, schedule_id: str) -> list[str]:
    client = await q.client()
    out = []
    for _, f in await client.xrange(q.keys.events):
        if f.get(b"e") == b"schedule-fired" and f.get(b"id") == schedule_id.encode():
            out.append(f[b"job"].decode())
    return out


async def _runs(q: JobQueue, prefix: str) -> list[dict[str, Any]]:
    client = await q.client()
    return [orjson.loads(r) for r in await client.lrange(f"{prefix}:runs", 0, -1)]


def _tick(job_id: str) -> int:
    return int(job_id.rsplit(":", 1)[1])


async def test_four_schedulers_enqueue_every_tick_exactly_once(
    procs: WorkerProcs, redis_url: str, prefix: str
) -> None:
    await procs.start(4)
    q = JobQueue("sched", redis=redis_url, prefix=prefix, worker={"scheduler": False})
    try:
        s = await q.schedule_job("tick", None, "* * * * * *")  # 6 fields: every second
        await wait_until(lambda: _count(q, prefix, 12), timeout=30, interval=0.2)
        await q.pause_schedule(s.id)
        fired = await _fired(q, s.id)
        await wait_until(lambda: _all_ran(q, prefix, fired), timeout=5)
        assert procs.alive() == 4, procs.stderr()

        counts = Counter(fired)
        assert len(fired) >= 12
        assert max(counts.values()) == 1, [j for j, n in counts.items() if n > 1]
        ticks = sorted(_tick(j) for j in fired)
        gaps = [b - a for a, b in itertools.pairwise(ticks)]
        assert set(gaps) == {1000}, f"missing or extra ticks: {gaps}"
        runs = await _runs(q, prefix)
        ran = Counter(r["id"] for r in runs)
        assert set(ran) == set(fired) and max(ran.values()) == 1
        assert len({r["pid"] for r in runs}) >= 2  # jobs spread over the workers
        lateness = sorted(r["start"] - _tick(r["id"]) for r in runs)
        assert lateness[0] > -50, lateness[:3]  # never noticeably early
        assert lateness[len(lateness) // 2] < 100, lateness
    finally:
        await q.close()


async def test_sigkilled_scheduler_loses_no_tick(
    procs: WorkerProcs, redis_url: str, prefix: str
) -> None:
    await procs.start(3)
    q = JobQueue("sched", redis=redis_url, prefix=prefix, worker={"scheduler": False})
    try:
        s = await q.schedule_every("tick", None, 250)
        await wait_until(lambda: _count(q, prefix, 8), timeout=20, interval=0.05)
        procs.kill(0)  # SIGKILL, at whatever point of its loop it is
        before = len(await _fired(q, s.id))
        await wait_until(lambda: _count(q, prefix, before + 12), timeout=20, interval=0.05)
        procs.kill(1)
        mid = len(await _fired(q, s.id))
        await wait_until(lambda: _count(q, prefix, mid + 8), timeout=20, interval=0.05)
        await q.pause_schedule(s.id)
        fired = await _fired(q, s.id)

        counts = Counter(fired)
        assert max(counts.values()) == 1
        ticks = sorted(_tick(j) for j in fired)
        gaps = [b - a for a, b in itertools.pairwise(ticks)]
        assert set(gaps) == {250}, f"missing or extra ticks: {gaps}"
        # Every enqueued tick ran, or is held by a killed worker until its lease expires.
        await wait_until(lambda: _all_ran(q, prefix, fired, allow_active=True), timeout=5)
    finally:
        await q.close()


async def _count(q: JobQueue, prefix: str, n: int) -> bool:
    return len(await _runs(q, prefix)) >= n


async def _all_ran(q: JobQueue, prefix: str, fired: list[str], allow_active: bool = False) -> bool:
    ran = {r["id"] for r in await _runs(q, prefix)}
    for jid in fired:
        if jid in ran:
            continue
        info = await q.get_job_status(jid)
        if not (allow_active and info is not None and info.status is JobStatus.ACTIVE):
            return False
    return True


async def test_schedules_fire_on_redis_cluster() -> None:
    """Schedule keys share the queue's hash tag and the change feed works on a cluster."""
    import time

    from _cluster import LocalCluster

    with LocalCluster(masters=3, replicas=0) as cluster:
        queues = [JobQueue("cq", redis=cluster.url, prefix="kqs") for _ in range(2)]
        started: list[str] = []
        try:
            for q in queues:
                q.process("beat", lambda job: started.append(job.id))
                await q.start()
            anchor = (int(time.time() * 1000) // 1000 + 1) * 1000
            s = await queues[0].schedule_every("beat", None, 100, start_date=anchor)
            await wait_until(lambda: len(started) >= 8, timeout=5)
            assert len(set(started)) == len(started)
            ticks = sorted(_tick(j) for j in started)[:8]
            assert ticks == [anchor + 100 * k for k in range(8)]
            assert await queues[1].remove_schedule(s.id)
        finally:
            for q in queues:
                await q.close()
