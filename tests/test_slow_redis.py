"""A slow Redis (issue 18, item 3): every byte between the queue and Redis goes through a
loopback proxy (``chaos.proxy``) that delivers it 20 ms late in each direction, with
200 ms spikes. With leases sized for that latency, no job runs twice, at once or at all:
no lease expires, none is recovered, every outcome is recorded once.

The lease rule (docs/pressure.md): ``lock_duration`` must exceed ``lock_renew_time``
plus the worst round trip to Redis, with room to spare; here the worst round trip is
~0.4 s (a spike each way), the renewal every 0.5 s and the lease 3 s. The defaults (30 s
and 15 s) hold too; short leases are what make a slow link dangerous.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from helpers import wait_until
from kitium_queue import JobQueue

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chaos.proxy import Proxy  # noqa: E402

pytestmark = pytest.mark.redis_only

BASE_S, SPIKE_S = 0.020, 0.200
LEASE = {"lock_duration": 3000, "lock_renew_time": 500, "max_stalled_interval": 500}


async def _spikes(proxy: Proxy, stop: asyncio.Event, every: float = 0.8, hold: float = 0.4) -> int:
    """20 ms each way, and a 200 ms spike every ``every`` s for ``hold`` s."""
    n = 0
    proxy.set_delay(BASE_S)
    while not stop.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
        if stop.is_set():
            break
        proxy.set_delay(SPIKE_S)
        n += 1
        await asyncio.sleep(hold)
        proxy.set_delay(BASE_S)
    return n


async def test_leases_hold_and_no_job_runs_twice_through_a_slow_link(
    redis_server: Any, prefix: str
) -> None:
    proxy = Proxy(redis_server.port, max_lifetime=120).start()
    runs: dict[str, list[tuple[float, float, int]]] = {}
    queues = [JobQueue("slow", redis=proxy.url, prefix=prefix, settings=LEASE) for _ in range(2)]
    stop = asyncio.Event()
    spikes: asyncio.Task[int] | None = None
    direct = Redis(port=redis_server.port)
    try:
        for w, q in enumerate(queues):

            async def work(job: Any, w: int = w) -> None:
                t0 = time.monotonic()
                await asyncio.sleep(job.data["ms"] / 1000)
                runs.setdefault(job.id, []).append((t0, time.monotonic(), w))

            q.process("work", work)
        rnd = random.Random(3)
        n = 120
        jobs = [("work", {"ms": rnd.randint(100, 400)}) for _ in range(n)]
        spikes = asyncio.ensure_future(_spikes(proxy, stop))
        t0 = time.monotonic()
        ids = await queues[0].add_jobs(jobs)  # through the slow link too
        for q in queues:
            await q.start(concurrency=8)

        async def done() -> bool:
            return (await queues[0].get_stats()).completed == n

        await wait_until(done, 60, interval=0.05)
        took = time.monotonic() - t0
        stop.set()
        n_spikes = await spikes
        events = await direct.xrange(queues[0].keys.events)
        stalled = [e for _, e in events if e.get(b"e") == b"job-stalled"]
        print(
            f"\nslow link (20 ms each way, {n_spikes} spikes of 200 ms): {n} jobs in "
            f"{took:.2f} s = {n / took:.1f} jobs/s (100 ms to 400 ms of work each)"
        )
        assert n_spikes >= 1
        assert sorted(runs) == sorted(ids)
        twice = {j: r for j, r in runs.items() if len(r) > 1}
        assert not twice, f"jobs that ran more than once: {twice}"
        assert not stalled, f"leases expired: {stalled[:3]}"
        completed = [e for _, e in events if e.get(b"e") == b"job-completed"]
        assert len(completed) == n  # one recorded outcome each
    finally:
        stop.set()
        if spikes is not None:
            await asyncio.gather(spikes, return_exceptions=True)
        for q in queues:
            await q.close()
        await direct.aclose()
        proxy.stop()
