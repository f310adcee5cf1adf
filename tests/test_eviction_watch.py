"""Keys Redis evicts while the workers run (``evictwatch.py``): a state set evicted by a
real ``maxmemory`` eviction strands the jobs it listed until the workers' watch notices
the eviction count grew and puts them back; a policy turned evicting on a queue that
did not opt out is reported once; a user without ``SCAN`` is told what to run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner
from redis.exceptions import OutOfMemoryError

from _redis import RedisServer
from helpers import app_module, user_without, wait_until
from kitium_queue import JobQueue, evictwatch
from kitium_queue.cli import main as cli_main
from kitium_queue.evictwatch import EvictionService


@pytest.fixture(autouse=True)
def quick_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evictwatch, "CHECK_S", 0.2)
    monkeypatch.setattr(evictwatch, "WALK_GAP_S", 0.5)


async def _evict(url: str, key: str) -> int:
    """Make Redis evict ``key`` for real: under ``volatile-lru`` only keys with a TTL
    may go, so give ``key`` one, lower ``maxmemory`` below what is in use and write one
    key more (Redis evicts what it may before it runs a write, then refuses it).
    Returns ``evicted_keys``."""
    c = aioredis.from_url(url)
    try:
        assert await c.pexpire(key, 10**9)
        used = int((await c.info("memory"))["used_memory"])
        await c.config_set("maxmemory", str(used - 1024))
        with contextlib.suppress(OutOfMemoryError):  # Redis evicts what it may first
            await c.set("kq-test-filler", "x")
        assert not await c.exists(key), "the key was not evicted"
        await c.config_set("maxmemory", "0")
        return int((await c.info("stats"))["evicted_keys"])
    finally:
        await c.aclose()


async def test_jobs_of_an_evicted_wait_set_run_once_the_watch_walks(
    prefix: str, tmp_path: Path
) -> None:
    """200 waiting jobs, their ``wait`` set evicted by Redis: every one runs exactly once
    (without the watch none would: nothing lists them). ``kitium-queue health`` shows
    the server's evictions."""
    with RedisServer("--maxmemory-policy", "volatile-lru") as srv:
        q = JobQueue("evicted", redis=srv.url, prefix=prefix, settings={"allow_eviction": True})
        runs: Counter[str] = Counter()

        @q.process("n")
        async def n(job: object) -> None:
            runs[job.id] += 1  # type: ignore[attr-defined]

        ids = [await q.add_job("n", {"i": i}) for i in range(200)]
        evicted = await _evict(srv.url, q.keys.wait)
        assert evicted >= 1
        source = (
            "from kitium_queue import JobQueue\n"
            f"queue = JobQueue('evicted', redis={srv.url!r}, prefix={prefix!r}, "
            "settings={'allow_eviction': True})\n"
        )
        with app_module(tmp_path, source, "kq_evicted") as module:
            got = await asyncio.to_thread(
                CliRunner().invoke, cli_main, ["health", f"{module}:queue", "--json"]
            )
        report = json.loads(got.stdout)
        assert report["memory"]["evicted_keys"] == evicted, report
        checks = {c["name"]: c for c in report["checks"]}
        assert f"{evicted} keys evicted" in checks["eviction policy"]["detail"], checks
        await q.start()
        try:
            await wait_until(lambda: len(runs) == 200, timeout=20)
            await asyncio.sleep(0.5)
        finally:
            await q.close()
        assert set(runs) == set(ids) and set(runs.values()) == {1}, runs.most_common(3)
        watch = next(s for s in q.services if isinstance(s, EvictionService)).watch
        assert watch.walks >= 1 and watch.last_report is not None


async def test_only_one_process_walks_and_evictions_before_the_start_count(
    prefix: str,
) -> None:
    """Evictions that happened before any worker started (a restart after them) are
    walked for once the first look sees the count; of two workers' watches of one queue
    only the leader walks."""
    with RedisServer("--maxmemory-policy", "volatile-lru") as srv:
        settings = {"allow_eviction": True}
        a = JobQueue("two", redis=srv.url, prefix=prefix, settings=settings)
        b = JobQueue("two", redis=srv.url, prefix=prefix, settings=settings)
        runs: Counter[str] = Counter()

        async def n(job: object) -> None:
            runs[job.id] += 1  # type: ignore[attr-defined]

        a.process("n", n)
        b.process("n", n)
        ids = [await a.add_job("n", {}, delay=60_000) for _ in range(30)]
        await _evict(srv.url, a.keys.delayed)
        await a.start()
        await b.start()
        watches = [s.watch for q in (a, b) for s in q.services if isinstance(s, EvictionService)]
        try:
            await wait_until(lambda: sum(w.walks for w in watches) >= 1, timeout=20)
            await asyncio.sleep(1.0)  # more looks: the other process never walks
            c = aioredis.from_url(srv.url)
            assert int(await c.zcard(a.keys.delayed)) == 30
            await c.aclose()
        finally:
            await a.close()
            await b.close()
        walks = [w.walks for w in watches]
        assert sorted(walks)[0] == 0 and sorted(walks)[1] >= 1, walks
        assert not runs, "a delayed job put back runs at its due time, not before"
        assert len(ids) == 30


async def test_a_policy_turned_evicting_is_reported_once(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    with RedisServer() as srv:
        q = JobQueue("policy", redis=srv.url, prefix=prefix)
        q.process("n", lambda job: None)
        with caplog.at_level(logging.WARNING, logger="kitium_queue"):
            await q.start()
            try:
                c = aioredis.from_url(srv.url)
                await c.config_set("maxmemory-policy", "allkeys-lru")
                await asyncio.sleep(1.2)  # several looks
                await c.config_set("maxmemory-policy", "noeviction")
                await c.aclose()
            finally:
                await q.close()
        said = [r.getMessage() for r in caplog.records if "is now allkeys-lru" in r.getMessage()]
        assert len(said) == 1, said
        assert "noeviction" in said[0] and "allow_eviction" in said[0]


async def test_a_user_without_scan_is_told_what_to_run(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    with RedisServer("--maxmemory-policy", "volatile-lru") as srv:
        url = await user_without(srv.url, srv.port, "noscan", "scan")
        q = JobQueue("noscan", redis=url, prefix=prefix, settings={"allow_eviction": True})
        q.process("n", lambda job: None)
        await q.add_job("n", {}, delay=60_000)
        await _evict(srv.url, q.keys.delayed)
        with caplog.at_level(logging.WARNING, logger="kitium_queue"):
            await q.start()
            try:
                await asyncio.sleep(1.5)
            finally:
                await q.close()
        said = [r.getMessage() for r in caplog.records if "may not SCAN" in r.getMessage()]
        assert len(said) == 1 and "jobs orphans APP --repair" in said[0], said


async def test_a_new_leader_does_not_walk_again_for_the_same_evictions(prefix: str) -> None:
    """After a deploy, the next leader reads the count the last walk covered (the
    queue's ``evictions-walked`` key): no walk for evictions already walked for, one for
    newer ones."""
    with RedisServer("--maxmemory-policy", "volatile-lru") as srv:
        settings = {"allow_eviction": True}
        first = JobQueue("deploy", redis=srv.url, prefix=prefix, settings=settings)
        first.process("n", lambda job: None)
        await first.add_job("n", {}, delay=60_000)
        await _evict(srv.url, first.keys.delayed)
        await first.start()
        w1 = next(s for s in first.services if isinstance(s, EvictionService)).watch
        await wait_until(lambda: w1.walks >= 1, timeout=20)
        await first.close()
        second = JobQueue("deploy", redis=srv.url, prefix=prefix, settings=settings)
        second.process("n", lambda job: None)
        await second.start()
        try:
            w2 = next(s for s in second.services if isinstance(s, EvictionService)).watch
            await wait_until(lambda: w2.evicted is not None, timeout=20)
            await asyncio.sleep(1.0)  # several looks
            assert w2.walks == 0
            await second.add_job("n", {}, delay=60_000)
            await _evict(srv.url, second.keys.delayed)
            await wait_until(lambda: w2.walks == 1, timeout=20)
        finally:
            await second.close()
