"""Parked jobs: jobs that cannot run now wait outside ``wait``, behind their blocker.

First the must-show: 100,000 jobs parked behind a concurrency key at its cap delay no
eligible job, and the idle worker burns no CPU meanwhile. Then the engine with an
explicit clock (parking at enqueue and at claim, order, timers, removal, draining,
clearing), the Python side (``kitium_queue.parking``), and a worker process killed while
it holds the slot a parked job waits for.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import sys
import time
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import JobQueue, JobStatus
from kitium_queue.features.flowcontrol import concurrency_key, concurrency_owners_key, rate_key
from kitium_queue.parking import (
    blocker_of,
    park_stats,
    parked_by_blocker,
    parked_count,
    parked_ids,
    parked_in,
)
from kitium_queue.scripts import ScriptCall

T0 = 1_700_000_000_000


class Engine:
    """enqueue / claim / finish / recover with an explicit clock, on one queue's scripts."""

    def __init__(self, q: JobQueue) -> None:
        self.q = q

    async def run(self, script: str, now: int, *args: Any) -> Any:
        client = await self.q.client()
        argv = [self.q.keys.base, str(now), "10000", *args]
        return await self.q.scripts.call(client, script, self.q.keys.all, argv)

    async def add(
        self, now: int, job_id: str, priority: int = 0, delay: int = 0, name: str = "n", **opts: Any
    ) -> str:
        raw = orjson.dumps(opts).decode() if opts else ""
        reply = await self.run(
            "enqueue", now, 86_400_000, job_id, name, "{}", raw, priority, delay, "0", ""
        )
        return str(reply[0].decode())

    async def claim(
        self, now: int, n: int = 10, lease: int = 10_000
    ) -> tuple[str, int, list[str], str]:
        r = await self.run("claim", now, n, lease, 0, 0, 2, "1", "w", 1000)
        return r[0].decode(), int(r[1]), [j[0].decode() for j in r[5:]], str(r[2])

    async def complete(self, now: int, job_id: str, token: str) -> None:
        (st,) = await self.run("finish", now, "1", job_id, token, "C", "null", "", 0, -1, -1, "")
        assert st == b"ok"

    async def status(self, job_id: str) -> JobStatus:
        info = await self.q.get_job_status(job_id)
        assert info is not None
        return info.status


async def _members(q: JobQueue, key: str) -> list[str]:
    client = await q.client()
    return [m.decode() for m in await client.zrange(key, 0, -1)]


# ================================================================ the must-show


@pytest.mark.redis_only
async def test_an_eligible_job_starts_at_once_behind_100000_parked_jobs(
    make_queue: QueueFactory,
    redis_client: aioredis.Redis,
) -> None:
    q = make_queue("must-show", worker={"concurrency": 4, "scheduler": False})
    q.set_concurrency_limit("tenant-a", 1)
    hold = asyncio.Event()
    started: dict[str, float] = {}

    async def blocker(job: Any) -> None:
        started[job.id] = time.monotonic()
        await hold.wait()

    async def free(job: Any) -> None:
        started[job.id] = time.monotonic()

    q.process("blocker", blocker)
    q.process("free", free)
    head = await q.add_job("blocker", {}, concurrency_key="tenant-a")
    await q.start()
    await wait_until(lambda: head in started, timeout=5)
    try:
        # 100,000 jobs of the same key, ahead of anything added later (priority 5): its
        # cap (1) is full, so each is parked as it is added (the enqueue slot). The first
        # goes through add_job; the rest through the same enqueue script with that job's
        # stored fields, 1000 per call (as add_jobs sends them, without its Python work).
        n = 100_000
        first = await q.add_job("blocker", {}, concurrency_key="tenant-a", priority=5)
        client = await q.client()
        data, opts = await client.hmget(q.keys.job(first), "d", "o")
        chunk = [f for _ in range(1000) for f in ("", "blocker", data, opts, 5, 0, "0", "")]
        argv = [q.keys.base, "", "10000", 86_400_000]
        calls = [
            ScriptCall("enqueue", q.keys.all, argv + chunk[: 8 * min(1000, n - 1 - i)])
            for i in range(0, n - 1, 1000)
        ]
        for i in range(0, len(calls), 10):
            for reply in await q.scripts.pipeline(client, calls[i : i + 10]):
                assert not isinstance(reply, Exception), reply
        assert await parked_count(q) == n
        assert await parked_by_blocker(q) == {"cc:tenant-a": n}
        assert (await q.get_stats()).waiting == 0

        # Nothing is eligible: the worker sleeps on its wake-up key, and claim (which
        # never looks at parked jobs) is not called in a loop. CPU time of this process
        # (worker + test) and of the Redis server over 2 s of wall time: a busy scan of
        # 100,000 jobs would keep one of them near 100 %. 10 % leaves room for a loaded
        # 2-core machine (lease renewals, the event loop's own wake-ups, other tests'
        # servers stealing the CPU) while staying far below any polling loop.
        await asyncio.sleep(0.3)  # let the last enqueue's wake-ups settle
        info0 = await redis_client.info("cpu")
        cpu0, wall0 = time.process_time(), time.monotonic()
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        await asyncio.sleep(2.0)
        wall = time.monotonic() - wall0
        cpu = time.process_time() - cpu0
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
        info1 = await redis_client.info("cpu")
        redis_cpu = sum(
            float(info1[k]) - float(info0[k]) for k in ("used_cpu_sys", "used_cpu_user")
        )
        rusage_cpu = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
        assert cpu / wall < 0.10, f"worker process busy while idle: {cpu:.3f} s CPU in {wall:.2f} s"
        assert rusage_cpu / wall < 0.10, rusage_cpu
        assert redis_cpu / wall < 0.10, f"Redis busy while idle: {redis_cpu:.3f} s CPU"

        # One eligible job: it is claimed at once, without looking at the parked ones.
        # Judged by work, not by the clock (another test process may hold a core):
        # the add, the wake-up of the idle worker (a blocking pop on its marker) and one
        # claim cost Redis well under a millisecond of CPU; any scan of the 100,000
        # parked jobs costs it hundreds. The wall-clock bound only tells a woken worker
        # from one that waits for a poll (its idle wait is 5 s): half of it, leaving room
        # for a loaded machine.
        info0 = await redis_client.info("cpu")
        t0 = time.monotonic()
        jid = await q.add_job("free", {})
        await wait_until(lambda: jid in started, timeout=5, interval=0.001)
        took = started[jid] - t0
        info1 = await redis_client.info("cpu")
        redis_cpu = sum(
            float(info1[k]) - float(info0[k]) for k in ("used_cpu_sys", "used_cpu_user")
        )
        assert redis_cpu < 0.020, f"Redis spent {redis_cpu * 1000:.1f} ms of CPU to start it"
        assert took < 2.5, f"the eligible job started {took * 1000:.1f} ms after it was added"
        assert await parked_count(q) == n
    finally:
        hold.set()
        # Drain the parked jobs in bounded calls rather than run 100,000 of them.
        await q.drain()


# ================================================================ parking (explicit clock)


async def test_a_full_cap_parks_jobs_at_enqueue_and_at_claim(make_queue: QueueFactory) -> None:
    q = make_queue()
    q.set_concurrency_limit("k", 2)
    e = Engine(q)
    for i in range(3):
        await e.add(T0, f"w{i}", concurrency_key="k")  # the cap is free: to wait
    _, _, got, token = await e.claim(T0)
    assert got == ["w0", "w1"]
    # w2 was examined at the full cap: parked by claim, out of wait.
    assert await _members(q, q.keys.wait) == []
    assert await _members(q, q.keys.parked("cc:k")) == ["w2"]
    # Added while the cap is full: parked at once, never put in wait.
    await e.add(T0, "late", concurrency_key="k")
    assert await _members(q, q.keys.wait) == []
    assert await e.status("late") is JobStatus.PENDING
    assert await blocker_of(q, "late") == "cc:k"
    assert await parked_ids(q) == ["w2", "late"]
    assert await parked_count(q) == 2
    # Others run past them.
    await e.add(T0, "other")
    assert (await e.claim(T0 + 1))[2] == ["other"]
    # One finished job of the key brings one parked job back, in the same call.
    await e.complete(T0 + 2, "w0", token)
    assert await _members(q, q.keys.wait) == ["w2"]
    assert await e.status("w2") is JobStatus.WAITING
    assert await blocker_of(q, "w2") is None
    assert (await e.claim(T0 + 3))[2] == ["w2"]
    assert await parked_count(q) == 1


async def test_parked_jobs_come_back_in_their_queue_order(make_queue: QueueFactory) -> None:
    q = make_queue()
    q.set_concurrency_limit("k", 1)
    e = Engine(q)
    await e.add(T0, "first", concurrency_key="k")
    _, _, got, token = await e.claim(T0, 1)
    assert got == ["first"]
    # Parked at enqueue, in mixed priorities: they return by priority, then arrival.
    plan = [("a", 0), ("b", 5), ("c", 0), ("d", 9), ("e", 5)]
    for jid, pri in plan:
        await e.add(T0, jid, priority=pri, concurrency_key="k")
    assert await parked_ids(q) == ["d", "b", "e", "a", "c"]
    assert await parked_ids(q, limit=2, offset=1) == ["b", "e"]
    assert await parked_in(q, "cc:k", limit=10) == ["d", "b", "e", "a", "c"]
    order, running = [], "first"
    for step in range(5):
        now = T0 + 10 * (step + 1)
        await e.complete(now, running, token)
        _, _, got, token = await e.claim(now, 5)
        assert len(got) == 1
        running = got[0]
        order.append(running)
    assert order == ["d", "b", "e", "a", "c"]
    assert await parked_count(q) == 0
    assert await parked_by_blocker(q) == {}


async def test_claim_parks_in_queue_order_across_calls(make_queue: QueueFactory) -> None:
    q = make_queue()
    q.set_concurrency_limit("k", 1)
    e = Engine(q)
    ids = [f"j{i}" for i in range(6)]
    for jid in ids:
        await e.add(T0, jid, concurrency_key="k")
    _, _, got, token = await e.claim(T0, 2)
    assert got == ["j0"]
    # claim parked the rest as it met them; they come back one per finished job.
    assert await parked_ids(q) == ids[1:]
    seen = ["j0"]
    for i in range(5):
        await e.complete(T0 + i + 1, seen[-1], token)
        _, _, got, token = await e.claim(T0 + i + 1, 3)
        seen += got
    assert seen == ids


async def test_parked_jobs_are_listed_across_blockers_in_queue_order(
    make_queue: QueueFactory,
) -> None:
    q = make_queue()
    q.set_concurrency_limit("*", 1)
    e = Engine(q)
    for key in ("x", "y", "z"):
        await e.add(T0, f"{key}-run", concurrency_key=key)
    assert len((await e.claim(T0))[2]) == 3
    expected = []
    for i in range(30):
        key = "xyz"[i % 3]
        await e.add(T0, f"{key}{i}", concurrency_key=key)
        expected.append(f"{key}{i}")
    assert await parked_ids(q, limit=100) == expected
    assert await parked_ids(q, limit=7, offset=20) == expected[20:27]
    assert await parked_by_blocker(q) == {"cc:x": 10, "cc:y": 10, "cc:z": 10}
    if not q.connection.is_memory:
        # An offset far past the end (a forged list_jobs cursor) is answered from the
        # counts, without walking the parked jobs to it: no ZRANGE of a blocker's set.
        client = await q.client()

        async def zrange_calls() -> int:
            stats = await client.info("commandstats")
            return int(stats.get("cmdstat_zrange", {}).get("calls", 0))

        before = await zrange_calls()
        assert await parked_ids(q, limit=5, offset=10**12) == []
        assert await zrange_calls() - before == 1  # the blockers' index only
        forged = f"pending:{float(10**12)!r}:"
        assert (await q.list_jobs(JobStatus.PENDING, cursor=forged)).jobs == []
    stats = await park_stats(q, top=2)
    assert (stats.total, stats.blockers, len(stats.top), stats.timers) == (30, 3, 2, 0)
    assert stats.slot_errors == {}


async def test_remove_cancel_and_drain_take_parked_jobs_out(make_queue: QueueFactory) -> None:
    q = make_queue()
    q.set_concurrency_limit("k", 1)
    e = Engine(q)
    await e.add(T0, "run", concurrency_key="k")
    await e.claim(T0)
    for i in range(5):
        await e.add(T0, f"p{i}", concurrency_key="k")
    assert await parked_count(q) == 5
    assert await q.remove_job("p1")
    assert await q.cancel_job("p2")
    assert await parked_ids(q) == ["p0", "p3", "p4"]
    assert await parked_count(q) == 3
    assert await q.get_job_status("p1") is None
    assert await q.drain() >= 3
    assert await parked_count(q) == 0
    assert await parked_by_blocker(q) == {}
    client = await q.client()
    assert not await client.exists(q.keys.parked("cc:k"))
    # The running job was left alone, and finishing it brings nothing back.
    assert await e.status("run") is JobStatus.ACTIVE


async def test_clear_deletes_parked_jobs_and_their_bookkeeping(make_queue: QueueFactory) -> None:
    q = make_queue()
    q.set_concurrency_limit("k", 1)
    q.flow.park_rate_limited_jobs()
    q.set_rate_limit("r", max=1, duration=60_000)
    e = Engine(q)
    await e.add(T0, "run", concurrency_key="k")
    await e.add(T0, "r0", rate_limit_key="r")
    await e.claim(T0)
    for i in range(3):
        await e.add(T0, f"p{i}", concurrency_key="k")
        await e.add(T0, f"r{i + 1}", rate_limit_key="r")
    assert await parked_count(q) == 6
    await q.clear(force=True)
    client = await q.client()
    left = sorted(k.decode() for k in await client.keys(q.keys.base + "*"))
    # What survives a clear: the id and lease counters, and flow control's own window
    # of key r (it expires by itself); nothing of the parked jobs or the running set.
    assert left == sorted([q.keys.id, q.keys.lease, rate_key(q.keys, "r")])


async def test_stats_and_status_show_parked_jobs(make_queue: QueueFactory) -> None:
    q = make_queue()
    q.set_concurrency_limit("k", 1)
    e = Engine(q)
    await e.add(T0, "run", concurrency_key="k")
    await e.claim(T0)
    await e.add(T0, "p", concurrency_key="k")
    info = await q.get_job_status("p")
    assert info is not None and info.status is JobStatus.PENDING
    stats = await q.get_stats()
    assert (stats.waiting, stats.active) == (0, 1)
    assert await parked_count(q) == 1


# ================================================================ timers


async def test_a_timer_blocker_unparks_when_due_and_sets_wake_in(make_queue: QueueFactory) -> None:
    q = make_queue()
    # A feature's check: jobs named 'later' wait behind a timer until T0 + 500.
    q.scripts.add_admission_check(
        "hold-later",
        f"""function(id, jk)
      if redis.call('HGET', jk, 'n') ~= 'later' or NOW >= {T0 + 500} then return true end
      park_timer('until-500', {T0 + 500}, 0, 0)
      admit_park('until-500')
      return false
    end""",
    )
    e = Engine(q)
    client = await q.client()
    for i in range(3):
        await e.add(T0, f"l{i}", name="later")
    status, wake_in, got, _ = await e.claim(T0)
    assert (status, got, wake_in) == ("empty", [], 500)
    assert await parked_in(q, "until-500") == ["l0", "l1", "l2"]
    # Idle workers sleep until the timer: nothing else is scheduled.
    assert (await e.claim(T0 + 200))[:3] == ("empty", 300, [])
    assert (await park_stats(q)).next_timer_ms == T0 + 500
    # Due: claim's promote step brings them back and hands them out in the same call.
    _, _, got, _ = await e.claim(T0 + 500)
    assert got == ["l0", "l1", "l2"]
    assert await client.zcard(q.keys.park_timers) == 0
    assert await client.hlen(q.keys.park_rules) == 0
    assert await parked_count(q) == 0


async def test_a_timer_unparks_a_bounded_number_per_firing(make_queue: QueueFactory) -> None:
    q = make_queue()
    q.scripts.add_admission_check(
        "pace",
        """function(id, jk)
      if redis.call('HGET', jk, 'n') ~= 'paced' then return true end
      if redis.call('GET', PREFIX .. 'open') then return true end
      park_timer('paced', NOW + 100, 2, 1000)
      admit_park('paced')
      return false
    end""",
    )
    e = Engine(q)
    client = await q.client()
    for i in range(5):
        await e.add(T0, f"p{i}", name="paced")
    await e.claim(T0)
    assert await parked_count(q) == 5
    await client.set(q.keys.extra("open"), "1")
    # 2 per firing, then again every 1000 ms while jobs remain.
    _, wake_in, got, _ = await e.claim(T0 + 100)
    assert got == ["p0", "p1"] and wake_in == 1000
    assert (await e.claim(T0 + 600))[2] == []
    assert (await e.claim(T0 + 1100))[2] == ["p2", "p3"]
    assert (await e.claim(T0 + 2100))[2] == ["p4"]
    assert await client.zcard(q.keys.park_timers) == 0


async def test_rate_limited_jobs_can_be_parked_until_their_window_ends(
    make_queue: QueueFactory,
) -> None:
    q = make_queue()
    q.set_rate_limit("c-*", max=2, duration=1000)
    q.flow.park_rate_limited_jobs()
    e = Engine(q)
    for i in range(5):
        await e.add(T0, f"a{i}", rate_limit_key="c-1")
    await e.add(T0, "free")
    _, _, got, _ = await e.claim(T0)
    assert got == ["a0", "a1", "free"]
    assert await parked_ids(q) == ["a2", "a3", "a4"]
    assert await e.status("a2") is JobStatus.PENDING
    # A job added while the window is full goes straight behind the others.
    await e.add(T0 + 100, "a5", rate_limit_key="c-1")
    assert await parked_ids(q) == ["a2", "a3", "a4", "a5"]
    status, wake_in, got, _ = await e.claim(T0 + 400)
    assert (status, got, wake_in) == ("empty", [], 600)
    # At the window's end: `max` of them come back (not all 4), in order.
    assert (await e.claim(T0 + 1000))[2] == ["a2", "a3"]
    assert await parked_ids(q) == ["a4", "a5"]
    assert (await e.claim(T0 + 2000))[2] == ["a4", "a5"]
    assert await parked_count(q) == 0


async def test_a_rate_limit_hold_parks_until_it_ends(make_queue: QueueFactory) -> None:
    q = make_queue()
    q.set_rate_limit("*", max=100, duration=1000)
    q.flow.park_rate_limited_jobs()
    e = Engine(q)
    client = await q.client()
    for i in range(3):
        await e.add(T0, f"h{i}", rate_limit_key="acme")
    await client.set(q.keys.hold("acme"), "1", px=60_000)
    _, wake_in, got, _ = await e.claim(T0)
    assert got == [] and await parked_count(q) == 3
    assert 0 < wake_in <= 60_000  # the hold's end, on the Redis clock
    await client.delete(q.keys.hold("acme"))
    assert (await e.claim(T0 + wake_in - 1))[2] == []
    # The timer is due at the hold's end; then all three come back, in order.
    assert (await e.claim(T0 + 60_000))[2] == ["h0", "h1", "h2"]


# ================================================================ recovery


async def test_a_dropped_lease_frees_the_slot_for_the_parked_job(make_queue: QueueFactory) -> None:
    q = make_queue()
    q.set_concurrency_limit("k", 1)
    e = Engine(q)
    await e.add(T0, "holder", concurrency_key="k")
    _, _, got, _ = await e.claim(T0, lease=1000)
    assert got == ["holder"]
    await e.add(T0, "behind", concurrency_key="k")
    assert await parked_count(q) == 1
    # The holder's worker vanished: its lease expires at T0 + 1000. The next claim
    # recovers it (the release slot frees its slot and unparks "behind") and hands out
    # the first of the two in queue order.
    _, _, got, _ = await e.claim(T0 + 1001, 5, lease=1000)
    assert got == ["holder"]
    assert await parked_ids(q) == ["behind"]
    client = await q.client()
    assert await client.smembers(concurrency_key(q.keys, "k")) == {b"holder"}


_CHAOS_WORKER = """
import asyncio, sys
import redis.asyncio
from kitium_queue import JobQueue

async def main(url, prefix):
    q = JobQueue("chaos", redis=url, prefix=prefix,
                 settings={"lock_duration": 1000, "max_stalled_interval": 200},
                 worker={"concurrency": 2, "scheduler": False})
    q.set_concurrency_limit("k", 1)

    rec = redis.asyncio.Redis.from_url(url)

    @q.process("work")
    async def work(job):
        await rec.rpush(prefix + ":started", job.id)
        await asyncio.sleep(3600)

    await q.start()
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@pytest.mark.redis_only
async def test_killing_the_worker_that_holds_the_slot_lets_the_parked_job_run(
    redis_url: str,
    prefix: str,
    redis_client: aioredis.Redis,
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CHAOS_WORKER,
        redis_url,
        prefix,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    factory = QueueFactory(redis_url, prefix)
    try:
        assert proc.stdout is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), 20)).strip() == b"ready"
        q = factory(
            "chaos",
            settings={"lock_duration": 1000, "max_stalled_interval": 200},
            worker={"concurrency": 2, "scheduler": False},
        )
        q.set_concurrency_limit("k", 1)
        holder = await q.add_job("work", {}, concurrency_key="k")
        await wait_until(lambda: redis_client.lrange(f"{prefix}:started", 0, -1), timeout=10)
        behind = await q.add_job("work", {}, concurrency_key="k")
        assert await blocker_of(q, behind) == "cc:k"
        proc.send_signal(signal.SIGKILL)
        await proc.wait()

        done: list[str] = []

        @q.process("work")
        async def work(job: Any) -> None:
            done.append(job.id)

        await q.start()
        # The holder's lease ends within 1 s; recovery frees its slot, then both run here
        # one at a time (cap 1), the recovered holder first.
        await wait_for_status(q, behind, JobStatus.COMPLETED, timeout=10)
        assert done == [holder, behind]
        assert await parked_count(q) == 0
        assert await redis_client.scard(concurrency_key(q.keys, "k")) == 0
        assert await redis_client.hlen(concurrency_owners_key(q.keys)) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await factory.aclose()


# ================================================================ cluster


@pytest.fixture(scope="module")
def cluster() -> Any:
    from _cluster import LocalCluster

    with LocalCluster(masters=3, replicas=0) as c:
        yield c


@pytest.mark.redis_only
async def test_parking_on_a_cluster_stays_under_the_queue_hash_tag(
    cluster: Any,
    prefix: str,
) -> None:
    factory = QueueFactory(cluster.url, prefix)
    try:
        q = factory("tagged", worker={"concurrency": 2, "scheduler": False})
        q.set_concurrency_limit("k", 1)
        q.flow.park_rate_limited_jobs()
        q.set_rate_limit("r", max=1, duration=60_000)
        hold = asyncio.Event()
        ran: list[str] = []

        @q.process("j")
        async def j(job: Any) -> None:
            ran.append(job.id)
            if job.data.get("hold"):
                await hold.wait()

        head = await q.add_job("j", {"hold": True}, concurrency_key="k")
        await q.add_job("j", {}, rate_limit_key="r")
        await q.start()
        await wait_until(lambda: head in ran, timeout=10)
        parked = [await q.add_job("j", {}, concurrency_key="k") for _ in range(3)]
        parked.append(await q.add_job("j", {}, rate_limit_key="r"))
        await wait_until(lambda: _count_is(q, 4), timeout=5)
        hold.set()
        for jid in parked[:3]:
            await wait_for_status(q, jid, JobStatus.COMPLETED, timeout=10)
        assert await q.drain() == 1  # the rate-limited one, parked for a minute
        # Every key the scripts touched hashes to the queue's slot (a CROSSSLOT error
        # would have failed the calls above; this checks the names themselves).
        from _cluster import key_slot

        slot = key_slot(q.keys.wait)
        for key in (
            q.keys.parked("cc:k"),
            q.keys.parked_index,
            q.keys.park_timers,
            q.keys.park_rules,
            concurrency_key(q.keys, "k"),
            concurrency_owners_key(q.keys),
            q.keys.slot_errors,
        ):
            assert key_slot(key) == slot, key
    finally:
        await factory.aclose()


async def _count_is(q: JobQueue, n: int) -> bool:
    return await parked_count(q) == n
