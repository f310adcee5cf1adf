"""Schedules against a real Redis: re-declaring, daylight saving time, steps, races,
a restarted Redis.

- Re-declaring an encrypted schedule unchanged writes nothing (each seal is a new
  ciphertext: every process start bumped its version and emitted ``schedule-updated``).
- When the clocks go back, patterns that match the same hours tick the same
  (``0 * * * *`` and ``0 0-23 * * *`` both on both passes; ``*/2`` and ``0-23/2`` once).
- A step larger than its field's range (``*/1000000000``) is refused, nothing stored.
- Three worker processes racing on schedules with ``limit`` / ``end_date``: exactly
  ``limit`` runs, none after ``end_date``.
- A redis-server SIGKILLed mid-run (AOF, fsync always) and restarted: no tick enqueued
  twice, none lost beyond the misfire policy.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
import redis.asyncio as aioredis

from _redis import RedisServer
from helpers import QueueFactory, wait_until
from kitium_queue import ConfigurationError, JobQueue
from kitium_queue.features.encryption import EncryptionManager, KeyConfig, generate_key
from kitium_queue.features.schedule_timing import CronTiming
from kitium_queue.features.scheduler import Scheduler
from kitium_queue.features.schedules import check_cron
from workers.procs import WorkerProcs

pytestmark = pytest.mark.redis_only

K1, K2 = generate_key(), generate_key()
MARK = "PLAINTEXT-MARKER-7f3c"


@pytest.fixture
async def rq(redis_url: str, prefix: str) -> AsyncIterator[QueueFactory]:
    factory = QueueFactory(redis_url, prefix)
    yield factory
    await factory.aclose()


async def _events(q: JobQueue, name: str, sid: str) -> list[dict[bytes, bytes]]:
    client = await q.client()
    return [
        f
        for _, f in await client.xrange(q.keys.events)
        if f.get(b"e") == name.encode() and f.get(b"id") == sid.encode()
    ]


def _tick(job_id: str) -> int:
    return int(job_id.rsplit(":", 1)[1])


# ---------------------------------------------------------------- encrypted re-declare


def _sealed(rq: QueueFactory, key: str = K1, kid: str = "k1") -> JobQueue:
    """A queue as a freshly started process builds it (its own manager)."""
    q = rq("enc", worker={"scheduler": False})
    EncryptionManager(q, keys=[KeyConfig(kid, key)], run_rotation=False)
    return q


async def test_redeclaring_an_encrypted_schedule_unchanged_writes_nothing(
    rq: QueueFactory, redis_client: aioredis.Redis
) -> None:
    """Each seal draws a new nonce: the stored data differed at every declaration, so a
    restart of N processes bumped the version N times and emitted N schedule-updated."""
    first = _sealed(rq)
    s = await first.schedule_every("t", {"s": MARK}, 60_000, encrypted=True, schedule_id="e")
    key = first.keys.schedule(s.id)
    before = await redis_client.hgetall(key)
    # 50 processes start and declare it (concurrently), then 5 more one by one.
    procs = [_sealed(rq) for _ in range(50)]
    await asyncio.gather(
        *(
            p.schedule_every("t", {"s": MARK}, 60_000, encrypted=True, schedule_id="e")
            for p in procs
        )
    )
    for _ in range(5):
        got = await _sealed(rq).schedule_every(
            "t", {"s": MARK}, 60_000, encrypted=True, schedule_id="e"
        )
        assert got.next_run_at == s.next_run_at
    after = await redis_client.hgetall(key)
    assert after == before  # version, data, updated_at: nothing written
    assert after[b"v"] == b"1"
    assert await _events(first, "schedule-updated", "e") == []
    assert MARK.encode() not in after[b"d"]
    # Changed data is a change: sealed anew, and the ticks open it.
    await procs[0].schedule_every("t", {"s": "other"}, 60_000, encrypted=True, schedule_id="e")
    changed = await redis_client.hgetall(key)
    assert changed[b"v"] == b"2" and changed[b"d"] != before[b"d"]
    assert len(await _events(first, "schedule-updated", "e")) == 1
    # An update that changes nothing writes nothing either.
    await procs[1].update_schedule("e", limit=None)
    assert await redis_client.hgetall(key) == changed


async def test_an_encrypted_template_is_sealed_again_when_it_cannot_be_kept(
    rq: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q = _sealed(rq)
    s = await q.schedule_every("t", {"s": MARK}, 60_000, encrypted=True, schedule_id="e")
    key = q.keys.schedule(s.id)
    # An envelope with a field seal never writes: replaced, not kept.
    env = orjson.loads(await redis_client.hget(key, "d"))
    await redis_client.hset(key, "d", orjson.dumps({**env, "x": 1}))
    await _sealed(rq).schedule_every("t", {"s": MARK}, 60_000, encrypted=True, schedule_id="e")
    env2 = orjson.loads(await redis_client.hget(key, "d"))
    assert set(env2) == set(env) and env2["ct"] != env["ct"]
    assert await redis_client.hget(key, "v") == b"2"
    # A ciphertext that does not open (bit flipped): sealed anew.
    ct = bytearray(env2["ct"].encode())
    ct[20] = ord("A") if ct[20] != ord("A") else ord("B")
    await redis_client.hset(key, "d", orjson.dumps({**env2, "ct": ct.decode()}))
    await _sealed(rq).schedule_every("t", {"s": MARK}, 60_000, encrypted=True, schedule_id="e")
    assert await redis_client.hget(key, "v") == b"3"
    # Under a key that is no longer current: sealed under the current one, once.
    m = EncryptionManager.for_queue(q)
    await m.add_key(KeyConfig("k2", K2))
    await m.rotate_key("k1", "k2")
    for _ in range(3):
        r = rq("enc", worker={"scheduler": False})
        EncryptionManager(r, keys=[KeyConfig("k1", K1), KeyConfig("k2", K2)], run_rotation=False)
        await r.schedule_every("t", {"s": MARK}, 60_000, encrypted=True, schedule_id="e")
    assert orjson.loads(await redis_client.hget(key, "d"))["kid"] == "k2"
    assert await redis_client.hget(key, "v") == b"4"
    # And the ticks still open to the declared data.
    w = rq("enc", worker={"concurrency": 2})
    EncryptionManager(w, keys=[KeyConfig("k1", K1), KeyConfig("k2", K2)], run_rotation=False)
    got: list[Any] = []
    w.process("t", lambda job: got.append(job.data))
    await w.update_schedule("e", interval_ms=100)
    await w.start()
    await wait_until(lambda: got, timeout=10)
    assert got[0] == {"s": MARK}


# ---------------------------------------------------------------- daylight saving time

BERLIN = ZoneInfo("Europe/Berlin")


def _ms(*args: int, fold: int = 0) -> int:
    return int(datetime(*args, tzinfo=BERLIN, fold=fold).timestamp() * 1000)  # type: ignore[misc]


async def _fire_through(q: JobQueue, sid: str, until: int) -> list[int]:
    """A scheduler round at each next tick of the schedule (Redis' clock replaced)."""
    sched = Scheduler()
    sched.queue = q
    fired: list[int] = []
    for _ in range(200):
        s = await q.get_schedule(sid)
        assert s is not None
        if s.next_run_at is None or s.next_run_at > until:
            break
        await sched.run_due(s.next_run_at)
        after = await q.get_schedule(sid)
        assert after is not None and after.last_run_at is not None
        fired.append(after.last_run_at)
    return fired


_EVERY_HOUR = ["0 * * * *", "0 0-23 * * *", "0 */1 * * *", "0 0-11,12-23 * * *", "@hourly"]
_EVEN_HOURS = ["0 */2 * * *", "0 0-23/2 * * *", "0 0,2,4,6,8,10,12,14,16,18,20,22 * * *"]


async def test_fall_back_equivalent_patterns_tick_the_same(rq: QueueFactory) -> None:
    """``0 * * * *`` ran on both passes of the repeated hour, ``0 0-23 * * *`` once: the
    rule read how the hour field was written (a leading ``*``), not what it matches."""
    start = datetime(2030, 10, 27, 0, 30)  # clocks go back on 2030-10-27 03:00 -> 02:00
    until = _ms(2030, 10, 27, 4, 30)
    every_hour = [
        _ms(2030, 10, 27, 1, 0),
        _ms(2030, 10, 27, 2, 0),
        _ms(2030, 10, 27, 2, 0, fold=1),
        _ms(2030, 10, 27, 3, 0),
        _ms(2030, 10, 27, 4, 0),
    ]
    even_hours = [_ms(2030, 10, 27, 2, 0), _ms(2030, 10, 27, 4, 0)]
    for i, (pattern, want) in enumerate(
        [(p, every_hour) for p in _EVERY_HOUR] + [(p, even_hours) for p in _EVEN_HOURS]
    ):
        q = rq(f"fb{i}", worker={"scheduler": False})
        s = await q.schedule_job("j", None, pattern, tz="Europe/Berlin", start_date=start)
        assert await _fire_through(q, s.id, until) == want, pattern
    # Seconds first: the hour is the third field.
    q = rq("fb-s", worker={"scheduler": False})
    s = await q.schedule_job("j", None, "0 0 0-23 * * *", tz="Europe/Berlin", start_date=start)
    assert await _fire_through(q, s.id, until) == every_hour


@pytest.mark.parametrize(
    "zone", ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "America/Santiago"]
)
def test_equivalent_patterns_have_the_same_ticks_around_each_transition(zone: str) -> None:
    tz = ZoneInfo(zone)
    t0 = int(datetime(2030, 1, 1, tzinfo=tz).timestamp() * 1000)
    hour = 3_600_000
    # The year's transitions: where the UTC offset changes from one hour to the next.
    offsets = [datetime.fromtimestamp((t0 + h * hour) / 1000, tz).utcoffset() for h in range(8761)]
    changes = [t0 + h * hour for h in range(1, 8761) if offsets[h] != offsets[h - 1]]
    assert len(changes) == 2
    groups = [
        ["30 * * * *", "30 0-23 * * *", "30 */1 * * *"],
        ["*/20 * * * *", "*/20 0-23 * * *", "0-59/20 0-23/1 * * *"],
        ["15 */3 * * *", "15 0-23/3 * * *", "15 0,3,6,9,12,15,18,21 * * *"],
    ]
    for group in groups:
        seen = []
        for pattern in group:
            timing, ticks = CronTiming(pattern, tz, None, None), []
            for change in changes:  # 8 hours either side of each transition
                t = change - 8 * hour
                while t < change + 8 * hour:
                    n = timing.next_after(t)
                    assert n is not None
                    ticks.append(n)
                    t = n
            seen.append(ticks)
        assert all(s == seen[0] for s in seen), group


# ---------------------------------------------------------------- steps


@pytest.mark.parametrize(
    ("pattern", "field"),
    [
        ("*/1000000000 * * * *", "minute"),
        ("*/60 * * * *", "minute"),
        ("0 */24 * * *", "hour"),
        ("0 0 1-31/31 * *", "day-of-month"),
        ("0 0 * JAN-DEC/12 *", "month"),
        ("0 0 * * 1/7", "day-of-week"),
        ("*/90 * * * * *", "second"),
        ("0 5,10-20/99 * * * *", "minute"),
    ],
)
async def test_a_step_larger_than_its_field_is_refused_and_nothing_is_stored(
    rq: QueueFactory, pattern: str, field: str
) -> None:
    """``*/1000000000`` was accepted and matched minute 0 only (an hourly schedule)."""
    q = rq("steps", worker={"scheduler": False})
    with pytest.raises(ConfigurationError, match=f"step .* {field} field is larger"):
        await q.schedule_job("j", None, pattern)
    assert await q.get_schedules() == []
    s = await q.schedule_job("j", None, "*/5 * * * *", schedule_id="keep")
    with pytest.raises(ConfigurationError, match="larger than its range"):
        await q.update_schedule("keep", cron_pattern=pattern)
    kept = await q.get_schedule("keep")
    assert kept is not None and kept.cron == "*/5 * * * *" and kept.next_run_at == s.next_run_at


def test_the_largest_step_of_each_field_is_accepted() -> None:
    for pattern in ["*/59 * * * *", "0 */23 * * *", "0 0 */30 * *", "0 0 * */11 *",
                    "0 0 * * */6", "*/59 0 0 * * *"]:  # fmt: skip
        assert check_cron(pattern) == pattern


async def test_a_stored_huge_step_still_fires_as_before(
    rq: QueueFactory, redis_client: aioredis.Redis
) -> None:
    """A record stored before such steps were refused is not damaged: it fires as it
    did (minute 0); re-declaring it says what to change."""
    q = rq("oldstep", worker={"scheduler": False})
    s = await q.schedule_job("j", None, "0 * * * *", schedule_id="old")
    key = q.keys.schedule(s.id)
    defn = orjson.loads(await redis_client.hget(key, "def"))
    await redis_client.hset(key, "def", orjson.dumps({**defn, "cron": "*/1000000000 * * * *"}))
    got = await q.get_schedule("old")
    assert got is not None and got.damaged is None
    assert s.next_run_at is not None
    sched = Scheduler()
    sched.queue = q
    await sched.run_due(s.next_run_at)
    fired = await q.get_schedule("old")
    assert fired is not None and fired.last_run_at == s.next_run_at
    assert fired.next_run_at == s.next_run_at + 3_600_000


# ---------------------------------------------------------------- racing processes


@pytest.fixture
async def procs(redis_url: str, prefix: str, tmp_path: Path) -> AsyncIterator[WorkerProcs]:
    wp = WorkerProcs(redis_url, prefix, "sched", tmp_path)
    try:
        yield wp
    finally:
        await wp.close()


async def _fired(q: JobQueue, sid: str) -> list[str]:
    return [f[b"job"].decode() for f in await _events(q, "schedule-fired", sid)]


async def _redis_ms(q: JobQueue) -> int:
    sec, usec = await (await q.client()).time()
    return int(sec) * 1000 + int(usec) // 1000


async def test_three_processes_fire_exactly_limit_runs_and_none_after_end_date(
    procs: WorkerProcs, redis_url: str, prefix: str
) -> None:
    await procs.start(3)
    q = JobQueue("sched", redis=redis_url, prefix=prefix, worker={"scheduler": False})
    try:
        limits = {f"lim{i}": 12 + i for i in range(4)}
        for i, (sid, n) in enumerate(limits.items()):
            await q.schedule_every("tick", None, 30 + 10 * i, limit=n, schedule_id=sid)
        await q.schedule_job("tick", None, "* * * * * *", limit=2, schedule_id="cron-lim")
        end = await _redis_ms(q) + 1500
        await q.schedule_every("tick", None, 40, end_date=end, schedule_id="until")
        await q.schedule_every("tick", None, 30, end_date=end, limit=1000, schedule_id="both")

        async def finished() -> bool:
            return all(s.finished for s in await q.get_schedules())

        await wait_until(finished, timeout=20, interval=0.1)
        await asyncio.sleep(0.5)  # a late scheduler round would show now
        for sid, n in {**limits, "cron-lim": 2}.items():
            fired = await _fired(q, sid)
            assert len(fired) == n == len(set(fired)), (sid, Counter(fired).most_common(2))
            s = await q.get_schedule(sid)
            assert s is not None and s.runs == n and s.next_run_at is None
        for sid, step in (("until", 40), ("both", 30)):
            ticks = sorted(_tick(j) for j in await _fired(q, sid))
            assert len(ticks) == len(set(ticks)) > 10
            assert max(ticks) <= end < max(ticks) + step, (sid, max(ticks), end)
            assert {b - a for a, b in itertools.pairwise(ticks)} == {step}
        # Every run happened once, in one of the processes.
        runs = [
            orjson.loads(r)["id"] for r in await (await q.client()).lrange(f"{prefix}:runs", 0, -1)
        ]
        assert len(runs) == len(set(runs))
        assert procs.alive() == 3, procs.stderr()
    finally:
        await q.close()


# ---------------------------------------------------------------- a restarted Redis


@pytest.fixture
def durable(tmp_path: Path) -> Any:
    srv = RedisServer("--appendonly", "yes", "--appendfsync", "always").start()
    try:
        yield srv
    finally:
        srv.close()


async def test_redis_killed_and_restarted_mid_run_enqueues_no_tick_twice(
    durable: RedisServer, tmp_path: Path
) -> None:
    """SIGKILL (AOF, fsync always) while two worker processes fire 3 schedules, down
    ~1.6 s (beyond the 1 s grace), restarted: catch_up runs every missed tick once,
    run_once one run for them (the latest), skip none; no tick is enqueued twice, and
    every enqueued tick's job runs."""
    prefix = "rs"
    wp = WorkerProcs(durable.url, prefix, "sched", tmp_path)
    q = JobQueue("sched", redis=durable.url, prefix=prefix, worker={"scheduler": False})
    try:
        await wp.start(2)
        interval = 100
        for policy in ("catch_up", "run_once", "skip"):
            await q.schedule_every("tick", None, interval, misfire=policy, schedule_id=policy)
        await wait_until(lambda: _fired(q, "skip"), timeout=10)
        await asyncio.sleep(0.7)
        durable.kill()
        down_at = time.time()
        await asyncio.sleep(1.6)
        durable.restart()
        down_ms = (time.time() - down_at) * 1000
        await asyncio.sleep(1.5)
        for sid in ("catch_up", "run_once", "skip"):
            await q.pause_schedule(sid)
        await asyncio.sleep(0.3)
        holes: dict[str, list[int]] = {}
        for sid in ("catch_up", "run_once", "skip"):
            fired = await _fired(q, sid)
            assert len(fired) == len(set(fired)), (sid, Counter(fired).most_common(2))
            ticks = sorted(_tick(j) for j in fired)
            gaps = [b - a for a, b in itertools.pairwise(ticks)]
            holes[sid] = [g // interval - 1 for g in gaps if g != interval]
            s = await q.get_schedule(sid)
            assert s is not None and s.runs == len(ticks)
        assert holes["catch_up"] == [], holes
        # One hole each: the ticks missed while Redis was down, beyond the grace.
        max_missed = int(down_ms // interval) + 2
        assert len(holes["run_once"]) == 1 and 1 <= holes["run_once"][0] <= max_missed, holes
        assert len(holes["skip"]) == 1 and holes["run_once"][0] <= holes["skip"][0], holes
        assert holes["skip"][0] <= max_missed, holes

        async def all_ran() -> bool:
            client = await q.client()
            ran = {orjson.loads(r)["id"] for r in await client.lrange(f"{prefix}:runs", 0, -1)}
            wanted = set()
            for sid in ("catch_up", "run_once", "skip"):
                wanted |= set(await _fired(q, sid))
            return wanted <= ran

        await wait_until(all_ran, timeout=15, interval=0.2)
        assert wp.alive() == 2, wp.stderr()
    finally:
        await q.close()
        await wp.close()
