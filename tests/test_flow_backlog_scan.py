"""Flow control: one rate-limit key's backlog leaves claim's scan to every other job.

A worker's claim examines at most ``max(1000, concurrency * 4)`` candidates of ``wait``.
A job over its ``rate_limit_key``'s rate stays in ``wait`` by default, so 1,500 jobs of
one key limited to 1 start per second at the front of ``wait`` filled that scan: a job
of another key, a job with no key, a due delayed job and a retry added behind them did
not start within 8 s (measured: the job with no key started after 498 s, once the
backlog fell below the scan), unless ``park_rate_limited_jobs()`` was on. Now one claim
leaves at most ``HELD_MAX`` (500) held-back jobs in ``wait`` and parks the rest behind
their key until its window ends (``features/flowpark.py``): they come back in their
order, none lost or run twice.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from helpers import QueueFactory, wait_until
from kitium_queue import JobQueue, JobStatus
from kitium_queue.features.flowpark import HELD_MAX
from kitium_queue.parking import parked_count, parked_in

pytestmark = pytest.mark.redis_only

T0 = 1_700_000_000_000
BACKLOG = 1500
#: A lease longer than every clock used here: no claimed job is recovered meanwhile.
LEASE = 10_000_000


class Engine:
    """claim with an explicit clock (windows and timers follow it), on one queue."""

    def __init__(self, q: JobQueue) -> None:
        self.q = q

    async def claim(self, now: int, n: int = 4, scan: int = 1000) -> list[str]:
        client = await self.q.client()
        argv = [self.q.keys.base, str(now), "10000", n, LEASE, 0, 0, 2, "1", "w", scan]
        reply = await self.q.scripts.call(client, "claim", self.q.keys.all, argv)
        return [j[0].decode() for j in reply[5:]]


async def _backlog(q: JobQueue, key: str, n: int = BACKLOG, first: int = 0) -> list[str]:
    ids = [f"{key}-{i:05d}" for i in range(first, first + n)]
    await q.add_jobs([("w", {}, {"rate_limit_key": key, "job_id": i}) for i in ids])
    return ids


async def _wait_ids(q: JobQueue) -> list[str]:
    client = await q.client()
    return [m.decode() for m in await client.zrange(q.keys.wait, 0, -1)]


async def test_another_keys_job_is_reached_while_the_backlog_keeps_its_order(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("order")
    q.set_rate_limit("big", max=50, duration=1000)
    q.set_rate_limit("small", max=5, duration=1000)
    e = Engine(q)
    big = await _backlog(q, "big")
    await q.add_job("w", {}, job_id="free")
    await q.add_job("w", {}, job_id="keyed", rate_limit_key="small")
    client = await q.client()
    # The first claim opens big's window (50 start), leaves 500 held back in wait and
    # parks the rest of its scan (450); the next parks the other 500 of the key and wakes
    # a worker (the marker), whose claim reaches the jobs behind the backlog.
    first = await e.claim(T0, n=100)
    assert first == big[:50]
    await client.delete(q.keys.marker)
    assert await e.claim(T0, n=100) == []
    assert await client.zscore(q.keys.marker, "0") is not None
    # Before: every claim examined 1000 of big's jobs and handed out nothing more.
    assert await e.claim(T0, n=100) == ["free", "keyed"]
    waiting = await _wait_ids(q)
    assert waiting == big[50 : 50 + HELD_MAX]  # the key's first ones, in wait
    assert await parked_count(q) == BACKLOG - 50 - HELD_MAX
    assert await parked_in(q, "rl:big", limit=3) == big[50 + HELD_MAX : 53 + HELD_MAX]
    info = await q.get_job_status(big[-1])
    assert info is not None and info.status is JobStatus.PENDING
    # A job of the key added now goes behind the others; it is parked when examined.
    late = await _backlog(q, "big", 1, first=BACKLOG)
    # Every window: `max` of the key start, in the order they were added, each once.
    got = first[:]
    now = T0
    while len(got) < BACKLOG + 1:
        now += 1000
        batch = await e.claim(now, n=100)
        assert len(batch) == 50 or len(got) + len(batch) == BACKLOG + 1, (now, batch)
        got += batch
        assert now < T0 + 40_000, len(got)
    assert got == big + late
    assert await parked_count(q) == 0
    assert await _wait_ids(q) == []


async def test_a_hold_on_the_key_parks_the_excess_until_it_ends(make_queue: QueueFactory) -> None:
    q = make_queue("hold")
    q.set_rate_limit("big", max=1000, duration=1000)
    e = Engine(q)
    big = await _backlog(q, "big")
    await q.add_job("w", {}, job_id="free")
    client = await q.client()
    # A processor raised RateLimited(scope="key") on big: held for a minute.
    await client.set(q.keys.hold("big"), "1", px=60_000)
    assert await e.claim(T0) == []
    assert await e.claim(T0) == []
    assert await e.claim(T0) == ["free"]
    assert await _wait_ids(q) == big[:HELD_MAX]
    assert await parked_count(q) == BACKLOG - HELD_MAX
    # At the hold's end (the key's timer), they start again in order.
    await client.delete(q.keys.hold("big"))
    got: list[str] = []
    now = T0 + 60_000
    while len(got) < BACKLOG:
        batch = await e.claim(now, n=1000)
        assert batch, len(got)
        got += batch
        now += 1000
    assert got == big
    assert await parked_count(q) == 0


async def test_a_backlog_within_the_bound_stays_in_wait(make_queue: QueueFactory) -> None:
    # Held-back jobs up to HELD_MAX (all keys together) stay where they are: waiting,
    # in wait, as without the bound; nothing is parked.
    q = make_queue("within")
    q.set_rate_limit("k-*", max=1, duration=60_000)
    e = Engine(q)
    a = await _backlog(q, "k-a", 300)
    b = await _backlog(q, "k-b", HELD_MAX - 300 + 2)
    assert await e.claim(T0, n=10) == [a[0], b[0]]
    assert await parked_count(q) == 0
    assert await _wait_ids(q) == a[1:] + b[1:]


@pytest.mark.parametrize("park", [False, True], ids=["default", "park_rate_limited_jobs"])
async def test_a_worker_starts_other_jobs_behind_a_big_backlog(
    make_queue: QueueFactory, park: bool
) -> None:
    q = make_queue("worker", worker={"concurrency": 4, "scheduler": False})
    q.set_rate_limit("big", max=1, duration=1000)
    q.set_rate_limit("small", max=5, duration=1000)
    if park:
        q.flow.park_rate_limited_jobs()
    runs: dict[str, int] = {}

    async def run(job: Any) -> None:
        runs[job.id] = runs.get(job.id, 0) + 1
        if job.id == "retried" and job.attempts <= 1:
            raise RuntimeError("first attempt fails")

    q.process("w", run)
    big = await _backlog(q, "big")
    await q.start()
    await wait_until(lambda: big[0] in runs, 10)
    others = {
        "free": {},
        "keyed": {"rate_limit_key": "small"},
        "delayed": {"delay": 300},
        "retried": {"rate_limit_key": "small", "attempts": 2, "backoff": 200},
    }
    for job_id, opts in others.items():
        await q.add_job("w", {}, job_id=job_id, **opts)
    # Before (default): none of them started within 8 s; big's backlog drained at 1/s
    # and the first of them started 498 s later.
    await wait_until(lambda: all(runs.get(i) == 1 + (i == "retried") for i in others), 10)
    await asyncio.sleep(0.3)
    # None of big's jobs lost or run twice: each one ran once or still waits its window.
    assert all(runs[i] == 1 for i in big if i in runs)
    done = [i for i in big if i in runs]
    assert done == big[: len(done)]  # in their order
    stats = await q.get_stats()
    parked = await parked_count(q)
    assert stats.waiting + parked + len(done) == BACKLOG, (stats, parked, len(done))
    assert parked >= BACKLOG - HELD_MAX - len(done)
