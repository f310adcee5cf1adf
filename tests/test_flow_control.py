"""Flow control: per-key rate limits, per-key and global concurrency caps, the queue
limiter across processes, and ``RateLimited`` holds.

The admission logic is first exercised through ``claim`` with an explicit clock
(deterministic windows), then with in-process workers (holds), then across two worker
processes (``tests/workers/flow_worker.py``): limits live in Redis and hold for all
workers together.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import ConfigurationError, JobQueue, JobStatus, RateLimited
from kitium_queue.features.flowcontrol import concurrency_key
from workers.procs import WorkerProcs

T0 = 1_700_000_000_000


class Engine:
    """claim / enqueue / finish with an explicit clock, on one queue's scripts."""

    def __init__(self, q: JobQueue) -> None:
        self.q = q

    async def run(self, script: str, now: int, *args: Any) -> Any:
        client = await self.q.client()
        argv = [self.q.keys.base, str(now), "10000", *args]
        return await self.q.scripts.call(client, script, self.q.keys.all, argv)

    async def add(self, now: int, job_id: str, **opts: Any) -> None:
        raw = orjson.dumps(opts) if opts else ""
        await self.run("enqueue", now, 86_400_000, job_id, "n", "{}", raw, 0, 0, "0", "")

    async def claim(self, now: int, n: int = 10) -> tuple[str, int, list[str], str]:
        r = await self.run("claim", now, n, 10_000, 0, 0, 2, "1", "w", 1000)
        token = r[2].decode() if isinstance(r[2], bytes) else str(r[2])
        return r[0].decode(), int(r[1]), [j[0].decode() for j in r[5:]], token

    async def complete(self, now: int, job_id: str, token: str) -> None:
        (st,) = await self.run("finish", now, "1", job_id, token, "C", "null", "", 0, -1, -1, "")
        assert st == b"ok"


# ================================================================ declarations


async def test_key_options_need_flow_control_and_valid_values(make_queue: QueueFactory) -> None:
    q = make_queue()
    with pytest.raises(ConfigurationError, match=r"needs flow control \(not enabled"):
        await q.add_job("j", {}, rate_limit_key="customer-1")
    q.set_rate_limit("customer-*", max=10, duration=1000)
    assert await q.add_job("j", {}, rate_limit_key="customer-1", concurrency_key="c")
    with pytest.raises(ConfigurationError, match="rate_limit_key must be a non-empty string"):
        await q.add_job("j", {}, rate_limit_key=42)
    with pytest.raises(ConfigurationError, match="'\\*' is only allowed at the end"):
        q.set_rate_limit("a*b", max=1)
    with pytest.raises(ConfigurationError, match="max must be an int >= 1"):
        q.set_rate_limit("a", max=0)
    with pytest.raises(ConfigurationError, match="duration must be >= 1 ms"):
        q.set_rate_limit("a", max=1, duration=0)
    with pytest.raises(ConfigurationError, match="concurrency limit must be an int >= 1"):
        q.set_concurrency_limit("a", 0)
    with pytest.raises(ConfigurationError, match="global concurrency must be"):
        q.set_global_concurrency(0)
    with pytest.raises(ValueError, match="scope must be one of"):
        RateLimited(100, scope="tenant")


# ================================================================ claim (explicit clock)


async def test_per_key_rate_limit_uses_a_window_per_key(make_queue: QueueFactory) -> None:
    q = make_queue()
    q.set_rate_limit("c-*", max=2, duration=1000)
    e = Engine(q)
    for i in range(3):
        await e.add(T0, f"a{i}", rate_limit_key="c-1")
    await e.add(T0, "b0", rate_limit_key="c-2")
    await e.add(T0, "free")
    status, _, got, _ = await e.claim(T0)
    assert status == "ok" and got == ["a0", "a1", "b0", "free"]
    status, wake_in, got, _ = await e.claim(T0 + 400)
    # Limited, not lost: a2 keeps its place and the worker sleeps until the window ends.
    assert (status, got, wake_in) == ("empty", [], 600)
    assert (await q.get_job_status("a2")).status is JobStatus.WAITING  # type: ignore[union-attr]
    assert (await e.claim(T0 + 999))[2] == []
    assert (await e.claim(T0 + 1000))[2] == ["a2"]


async def test_the_most_specific_limit_applies(make_queue: QueueFactory) -> None:
    q = make_queue()
    q.set_rate_limit("*", max=1, duration=1000)
    q.set_rate_limit("vip-*", max=3, duration=1000)
    q.set_rate_limit("vip-gold", max=5, duration=1000)
    e = Engine(q)
    for key in ("plain", "vip-1", "vip-gold"):
        for i in range(6):
            await e.add(T0, f"{key}.{i}", rate_limit_key=key)
    _, _, got, _ = await e.claim(T0, 100)
    assert Counter(j.split(".")[0] for j in got) == {"plain": 1, "vip-1": 3, "vip-gold": 5}


async def test_limited_jobs_never_block_the_jobs_behind_them(make_queue: QueueFactory) -> None:
    q = make_queue()
    q.set_rate_limit("hot", max=1, duration=60_000)
    e = Engine(q)
    for i in range(5):
        await e.add(T0, f"hot{i}", rate_limit_key="hot")
    for i in range(3):
        await e.add(T0, f"cold{i}")
    _, _, got, _ = await e.claim(T0, 3)
    assert got == ["hot0", "cold0", "cold1"]
    _, _, got, _ = await e.claim(T0, 3)
    assert got == ["cold2"]


async def test_per_key_concurrency_cap(make_queue: QueueFactory) -> None:
    q = make_queue()
    q.set_concurrency_limit("c-*", 2)
    e = Engine(q)
    for i in range(4):
        await e.add(T0, f"x{i}", concurrency_key="c-x")
    await e.add(T0, "y0", concurrency_key="c-y")
    _, _, got, token = await e.claim(T0)
    assert got == ["x0", "x1", "y0"]
    assert (await e.claim(T0 + 1))[2] == []
    await e.complete(T0 + 2, "x0", token)
    _, _, got, token2 = await e.claim(T0 + 3)
    assert got == ["x2"]
    # The set of running ids is pruned as jobs finish: it never outgrows the cap.
    client = await q.client()
    assert await client.scard(concurrency_key(q.keys, "c-x")) == 2
    await e.complete(T0 + 4, "x1", token)
    await e.complete(T0 + 4, "x2", token2)
    assert (await e.claim(T0 + 5))[2] == ["x3"]
    assert await client.smembers(concurrency_key(q.keys, "c-x")) == {b"x3"}


async def test_capped_jobs_beyond_the_scan_window_never_hide_the_jobs_behind_them(
    make_queue: QueueFactory,
) -> None:
    q = make_queue()
    q.set_concurrency_limit("hot", 1)
    e = Engine(q)
    hot = '{"concurrency_key":"hot"}'

    async def add_hot(now: int, names: list[str]) -> None:
        args: list[Any] = [86_400_000]
        for name in names:
            args += [name, "n", "{}", hot, 0, 0, "0", ""]
        await e.run("enqueue", now, *args)

    async def claim(now: int) -> list[str]:  # examines at most 100 waiting jobs per call
        r = await e.run("claim", now, 4, 10_000, 0, 0, 2, "1", "w", 100)
        return [j[0].decode() for j in r[5:]]

    # Already in wait when the cap fills: each claim parks what it examines (at most its
    # scan limit), so the free job behind 250 of them is reached by the third claim,
    # and no later claim looks at them again.
    await add_hot(T0, ["run", *(f"h{i}" for i in range(250))])
    await e.add(T0, "free")
    claimed = []
    for step in range(3):
        claimed += await claim(T0 + step)
    assert claimed == ["run", "free"]
    client = await q.client()
    assert await client.zcard(q.keys.wait) == 0
    # Added while the cap is full: parked at once, never in the way.
    await add_hot(T0 + 10, [f"late{i}" for i in range(150)])
    await e.add(T0 + 10, "free2")
    assert await claim(T0 + 11) == ["free2"]
    assert await q.drain() == 250 + 150  # the parked ones go like waiting ones


async def test_global_concurrency_cap(make_queue: QueueFactory) -> None:
    q = make_queue()
    q.set_global_concurrency(3)
    e = Engine(q)
    for i in range(6):
        await e.add(T0, f"j{i}")
    _, _, got, token = await e.claim(T0, 10)
    assert got == ["j0", "j1", "j2"]
    assert (await e.claim(T0, 10))[2] == []
    await e.complete(T0 + 1, "j1", token)
    assert (await e.claim(T0 + 1, 10))[2] == ["j3"]
    q.set_global_concurrency(None)
    assert (await e.claim(T0 + 2, 10))[2] == ["j4", "j5"]


async def test_admission_commit_runs_only_when_every_check_admits(
    make_queue: QueueFactory,
) -> None:
    q = make_queue()
    counter = q.keys.extra("counted")
    q.scripts.add_admission_check(
        "count-me",
        (
            "function(id, jk) return true, function(id2) "
            f"redis.call('RPUSH', '{counter}', id2) end end"
        ),
    )
    q.scripts.add_admission_check("no-x", "function(id) return id ~= 'x' end")
    q.scripts.add_admission_check("no-x", "function(id) return id ~= 'x' and id ~= 'z' end")
    e = Engine(q)
    for jid in ("x", "y", "z"):
        await e.add(T0, jid)
    assert (await e.claim(T0))[2] == ["y"]
    client = await q.client()
    assert await client.lrange(counter, 0, -1) == [b"y"]  # x and z were never counted


# ================================================================ RateLimited holds


async def test_rate_limited_holds_the_whole_queue(make_queue: QueueFactory) -> None:
    q = make_queue(worker={"concurrency": 4, "scheduler": False})
    started: dict[str, float] = {}
    hold_at: list[float] = []

    @q.process("call")
    async def call(job: Any) -> str:
        if job.data["limit"] and not hold_at:
            hold_at.append(time.monotonic())
            raise RateLimited(500)
        started.setdefault(job.id, time.monotonic())
        return "ok"

    first = await q.add_job("call", {"limit": True}, attempts=1)
    await q.start()
    await wait_until(lambda: hold_at, timeout=3)
    others = [await q.add_job("call", {"limit": False}) for _ in range(3)]
    await wait_until(lambda: len(started) == 4, timeout=5)
    for jid in others:
        assert started[jid] - hold_at[0] >= 0.45, "a job started while the queue was held"
    # Started is not finished: the outcome is recorded a moment after the run returns.
    info = await wait_for_status(q, first, JobStatus.COMPLETED)
    # attempts=1 and still completed: the rate-limited run did not spend the attempt.
    assert info.attempts == 1


async def test_rate_limited_holds_only_its_key_across_workers(
    backend_url: str, prefix: str
) -> None:
    factory = QueueFactory(backend_url, prefix)
    started: dict[str, float] = {}
    held: list[float] = []

    async def call(job: Any) -> None:
        if job.data.get("limit") and not held:
            held.append(time.monotonic())
            raise RateLimited(2000)  # scope "auto": the job's rate_limit_key
        started.setdefault(job.id, time.monotonic())

    try:
        workers = [factory(worker={"concurrency": 2, "scheduler": False}) for _ in range(2)]
        for w in workers:
            w.set_rate_limit("*", max=1000, duration=1000)
            w.process("call", call)
        q = workers[0]
        await q.add_job("call", {"limit": True}, rate_limit_key="acme")
        for w in workers:
            await w.start()
        await wait_until(lambda: held, timeout=3)
        acme = [await q.add_job("call", {}, rate_limit_key="acme") for _ in range(2)]
        other = [await q.add_job("call", {}, rate_limit_key="globex") for _ in range(2)]
        await wait_until(lambda: all(j in started for j in other), timeout=3)
        # Other keys run at once: well inside the hold (a loaded machine may take its
        # time to claim, so the hold is long and the bound generous).
        assert all(started[j] - held[0] < 1.5 for j in other)
        await wait_until(lambda: all(j in started for j in acme), timeout=8)
        assert all(started[j] - held[0] >= 1.95 for j in acme)  # acme held on both workers
    finally:
        await factory.aclose()


# ================================================================ across processes


@pytest.fixture
async def procs(redis_url: str, prefix: str, tmp_path: Path) -> AsyncIterator[WorkerProcs]:
    wp = WorkerProcs(redis_url, prefix, "flow", tmp_path)
    try:
        yield wp
    finally:
        await wp.close()


async def _runs(q: JobQueue, prefix: str) -> list[dict[str, Any]]:
    client = await q.client()
    return [orjson.loads(r) for r in await client.lrange(f"{prefix}:runs", 0, -1)]


async def _wait_runs(q: JobQueue, prefix: str, n: int, timeout: float) -> list[dict[str, Any]]:
    async def enough() -> list[dict[str, Any]] | None:
        runs = await _runs(q, prefix)
        return runs if len(runs) >= n else None

    result: list[dict[str, Any]] = await wait_until(enough, timeout=timeout, interval=0.05)
    return result


def _max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def _max_overlap(runs: list[dict[str, Any]]) -> int:
    edges = sorted(
        [(r["start"], 1) for r in runs] + [(r["end"], -1) for r in runs], key=lambda e: (e[0], e[1])
    )
    cur = best = 0
    for _, d in edges:
        cur += d
        best = max(best, cur)
    return best


@pytest.mark.redis_only
async def test_queue_limiter_holds_across_two_processes(
    procs: WorkerProcs, redis_url: str, prefix: str
) -> None:
    await procs.start(2, "--limiter", "10/1000", "--concurrency", "8", "--no-scheduler")
    q = JobQueue("flow", redis=redis_url, prefix=prefix, worker={"scheduler": False})
    try:
        await q.add_jobs([("j", {}) for _ in range(40)])
        runs = await _wait_runs(q, prefix, 40, timeout=15)
        starts = [r["start"] for r in runs]
        span = (max(starts) - min(starts)) / 1000
        # 40 jobs at 10 per 1 s window: 4 windows, so at least 3 s from first to last.
        assert span >= 2.9, span
        # Fixed windows: any sliding second holds at most two windows' worth.
        assert _max_in_window(starts, 1000) <= 20
        assert len({r["pid"] for r in runs}) == 2
    finally:
        await q.close()


@pytest.mark.redis_only
async def test_global_concurrency_cap_holds_across_two_processes(
    procs: WorkerProcs, redis_url: str, prefix: str
) -> None:
    # 2 slots each: together they could run 4 at once; the cap allows 3.
    await procs.start(2, "--global-cap", "3", "--concurrency", "2", "--no-scheduler")
    q = JobQueue("flow", redis=redis_url, prefix=prefix, worker={"scheduler": False})
    try:
        await q.add_jobs([("j", {"ms": 150}) for _ in range(18)])
        runs = await _wait_runs(q, prefix, 18, timeout=15)
        assert _max_overlap(runs) == 3
        assert len({r["pid"] for r in runs}) == 2
    finally:
        await q.close()


@pytest.mark.redis_only
async def test_per_key_limit_and_cap_hold_across_two_processes(
    procs: WorkerProcs, redis_url: str, prefix: str
) -> None:
    await procs.start(
        2, "--rate", "rate-*=4/1000", "--cap", "cap-*=1", "--concurrency", "6", "--no-scheduler"
    )
    q = JobQueue("flow", redis=redis_url, prefix=prefix, worker={"scheduler": False})
    q.set_rate_limit("rate-*", max=4, duration=1000)
    q.set_concurrency_limit("cap-*", 1)
    try:
        jobs: list[Any] = []
        for i in range(12):
            jobs.append(("rate-a", {"i": i}, {"rate_limit_key": "rate-a"}))
            jobs.append(("cap-a", {"i": i, "ms": 60}, {"concurrency_key": "cap-a"}))
            jobs.append(("free", {"i": i}))
        await q.add_jobs(jobs)
        runs = await _wait_runs(q, prefix, 36, timeout=20)
        by: dict[str, list[dict[str, Any]]] = {}
        for r in runs:
            by.setdefault(r["name"], []).append(r)
        rate_starts = [r["start"] for r in by["rate-a"]]
        assert _max_in_window(rate_starts, 1000) <= 8  # 4 per fixed window
        assert (max(rate_starts) - min(rate_starts)) / 1000 >= 1.9  # 12 at 4/s: 3 windows
        assert _max_overlap(by["cap-a"]) == 1
        # Limited jobs never held a slot: the unlimited ones were all done long before.
        assert max(r["end"] for r in by["free"]) < max(rate_starts) - 1000
        assert len({r["pid"] for r in runs}) == 2
    finally:
        await q.close()
