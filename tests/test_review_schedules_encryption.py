"""Schedules and payload encryption under hostile conditions, against a real Redis.

Schedules: cron patterns no process may store (random fields, very long or unprintable
text) are refused with a clear, printable error and nothing is stored; a Europe/Berlin
schedule across both daylight saving transitions fires each wall-clock tick once (twice
for a wildcard hour when the clocks go back); a scheduler process frozen (SIGSTOP) at
any point of its loop and resumed after the others moved on enqueues no tick twice and
loses none; a removed schedule never fires again.

Encryption: a schedule's ticks under a key no process holds any more are dead-lettered
with the key id (no wedge, the other schedules keep firing); a ciphertext with a bit
flipped in Redis is refused, the job dead-lettered with the reason.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import signal
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest
import redis.asyncio as aioredis

from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import ConfigurationError, JobQueue, JobStatus
from kitium_queue.features.encryption import EncryptionManager, KeyConfig, generate_key
from kitium_queue.features.scheduler import Scheduler
from kitium_queue.features.schedules import check_cron
from workers.procs import WorkerProcs

pytestmark = pytest.mark.redis_only

BERLIN = ZoneInfo("Europe/Berlin")
K1, K2 = generate_key(), generate_key()
MARK = "PLAINTEXT-MARKER-42ab"


@pytest.fixture
async def rq(redis_url: str, prefix: str) -> AsyncIterator[QueueFactory]:
    factory = QueueFactory(redis_url, prefix)
    yield factory
    await factory.aclose()


def _ms(*args: int, fold: int = 0) -> int:
    return int(datetime(*args, tzinfo=BERLIN, fold=fold).timestamp() * 1000)  # type: ignore[misc]


# ---------------------------------------------------------------- patterns


@pytest.mark.parametrize(
    "pattern",
    ["R * * * *", "0 R * * *", "r(0-30) * * * *", "0 0 * * R/2", "0 R(1-5),7 * * *"],
)
async def test_a_random_field_is_refused_and_nothing_is_stored(
    rq: QueueFactory, pattern: str
) -> None:
    """croniter draws a random value for ``R`` at every parse: each process (and each
    round) would compute other ticks, so the schedule skipped most of its runs."""
    q = rq("pat")
    with pytest.raises(ConfigurationError, match="random"):
        await q.schedule_job("j", None, pattern)
    assert await q.get_schedules() == []


def test_month_and_day_names_with_an_r_are_not_random() -> None:
    assert check_cron("0 0 * MAR,APR FRI") == "0 0 * MAR,APR FRI"
    assert check_cron("0 0 * * THU-SAT") == "0 0 * * THU-SAT"


async def test_a_very_long_pattern_is_refused_at_once_and_nothing_is_stored(
    rq: QueueFactory,
) -> None:
    """A pattern of 200,000 list values took croniter about 1.5 s per parse, in the
    worker's event loop, several times per scheduler round."""
    q = rq("long")
    pattern = ",".join(str(i % 60) for i in range(200_000)) + " * * * *"
    with pytest.raises(ConfigurationError, match="at most 1000") as err:
        await q.schedule_job("j", None, pattern)
    assert len(str(err.value)) < 1000  # the message quotes a clipped pattern
    assert await q.get_schedules() == []


@pytest.mark.parametrize("pattern", ["\ud800 * * * *", "\x1b[31m * * * *", "\u202e61 * * * *"])
def test_an_unprintable_pattern_error_can_be_printed_and_logged(pattern: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        check_cron(pattern)
    text = str(err.value)
    text.encode("utf-8")  # a lone surrogate made the message itself unencodable
    assert "\x1b" not in text and "\u202e" not in text


# ---------------------------------------------------------------- daylight saving time


async def _fire_through(q: JobQueue, sid: str, until: int) -> list[int]:
    """Run a scheduler round at each next tick of the schedule (Redis' clock replaced),
    until ``until``; the ticks enqueued."""
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


async def test_fall_back_a_fixed_hour_fires_once_and_a_wildcard_hour_twice(
    rq: QueueFactory,
) -> None:
    start = datetime(2030, 10, 26, 12, 0)  # clocks go back on 2030-10-27 03:00 -> 02:00
    until = _ms(2030, 10, 28, 4, 0)
    q = rq("dst-a", worker={"scheduler": False})  # one schedule per queue: run_due fires all
    fixed = await q.schedule_job("j", None, "30 2 * * *", tz="Europe/Berlin", start_date=start)
    assert await _fire_through(q, fixed.id, until) == [
        _ms(2030, 10, 27, 2, 30),
        _ms(2030, 10, 28, 2, 30),
    ]
    # "*/30 2": the hour is fixed, so the repeated hour runs once.
    q = rq("dst-b", worker={"scheduler": False})
    every = await q.schedule_job("j", None, "*/30 2 * * *", tz="Europe/Berlin", start_date=start)
    assert await _fire_through(q, every.id, until) == [
        _ms(2030, 10, 27, 2, 0),
        _ms(2030, 10, 27, 2, 30),
        _ms(2030, 10, 28, 2, 0),
        _ms(2030, 10, 28, 2, 30),
    ]
    q = rq("dst-c", worker={"scheduler": False})
    wild = await q.schedule_job(
        "j", None, "0 * * * *", tz="Europe/Berlin", start_date=datetime(2030, 10, 27, 1, 30)
    )
    got = await _fire_through(q, wild.id, _ms(2030, 10, 27, 3, 0))
    assert got == [
        _ms(2030, 10, 27, 2, 0),
        _ms(2030, 10, 27, 2, 0, fold=1),
        _ms(2030, 10, 27, 3, 0),
    ]
    assert [b - a for a, b in itertools.pairwise(got)] == [3_600_000, 3_600_000]


async def test_spring_forward_the_skipped_tick_fires_once_right_after(rq: QueueFactory) -> None:
    q = rq("dst2", worker={"scheduler": False})
    start = datetime(2030, 3, 30, 12, 0)  # clocks go forward on 2030-03-31 02:00 -> 03:00
    s = await q.schedule_job("j", None, "30 2 * * *", tz="Europe/Berlin", start_date=start)
    assert await _fire_through(q, s.id, _ms(2030, 4, 1, 4, 0)) == [
        _ms(2030, 3, 31, 3, 0),
        _ms(2030, 4, 1, 2, 30),
    ]
    # A wildcard hour: the skipped hour has no tick (a 23-hour day), none is added.
    q = rq("dst3", worker={"scheduler": False})
    w = await q.schedule_job(
        "j", None, "30 * * * *", tz="Europe/Berlin", start_date=datetime(2030, 3, 31, 1, 0)
    )
    assert await _fire_through(q, w.id, _ms(2030, 3, 31, 4, 0)) == [
        _ms(2030, 3, 31, 1, 30),
        _ms(2030, 3, 31, 3, 30),
    ]


# ---------------------------------------------------------------- frozen schedulers


@pytest.fixture
async def procs(redis_url: str, prefix: str, tmp_path: Path) -> AsyncIterator[WorkerProcs]:
    wp = WorkerProcs(redis_url, prefix, "sched", tmp_path)
    try:
        yield wp
    finally:
        for p in wp.procs:
            if p.returncode is None:
                p.send_signal(signal.SIGCONT)
        await wp.close()


async def _fired(q: JobQueue, schedule_id: str) -> list[str]:
    client = await q.client()
    return [
        f[b"job"].decode()
        for _, f in await client.xrange(q.keys.events)
        if f.get(b"e") == b"schedule-fired" and f.get(b"id") == schedule_id.encode()
    ]


async def test_a_frozen_scheduler_resuming_late_enqueues_no_tick_twice(
    procs: WorkerProcs, redis_url: str, prefix: str
) -> None:
    await procs.start(3)
    q = JobQueue("sched", redis=redis_url, prefix=prefix, worker={"scheduler": False})
    try:
        s = await q.schedule_every("tick", None, 200)
        await wait_until(lambda: _fired(q, s.id), timeout=20, interval=0.05)
        for i, hold in enumerate([0.35, 0.9, 0.15, 1.7, 0.5, 1.1]):
            p = procs.procs[i % 2]
            p.send_signal(signal.SIGSTOP)  # wherever its loop is: mid-read, mid-fire
            await asyncio.sleep(hold)
            p.send_signal(signal.SIGCONT)
            await asyncio.sleep(0.13 * (i + 1))
        await asyncio.sleep(1.0)
        await q.pause_schedule(s.id)
        await asyncio.sleep(0.5)
        fired = await _fired(q, s.id)
        counts = Counter(fired)
        assert max(counts.values()) == 1, [j for j, n in counts.items() if n > 1]
        ticks = sorted(int(j.rsplit(":", 1)[1]) for j in fired)
        gaps = {b - a for a, b in itertools.pairwise(ticks)}
        assert gaps == {200}, f"missing or extra ticks: {sorted(gaps)}"
        assert len(ticks) >= 30
        assert procs.alive() == 3, procs.stderr()
    finally:
        await q.close()


async def test_a_schedule_removed_while_firing_never_fires_again(rq: QueueFactory) -> None:
    q = rq("rm", worker={"concurrency": 2})
    q.process("tick", lambda job: None)
    s = await q.schedule_every("tick", None, 50)
    await q.start()
    await wait_until(lambda: _fired(q, s.id), timeout=10)
    assert await q.remove_schedule(s.id)
    removed_at = len(await _fired(q, s.id))
    await asyncio.sleep(0.6)
    assert len(await _fired(q, s.id)) == removed_at
    assert await q.get_schedule(s.id) is None


# ---------------------------------------------------------------- encryption


async def test_ticks_under_a_key_no_process_holds_are_dead_lettered_naming_it(
    rq: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    old = rq("gone")
    m_old = EncryptionManager(old, keys=[KeyConfig("k-old", K1)], run_rotation=False)
    await m_old.initialize()
    await old.schedule_every("t", {"s": MARK}, 100, encrypted=True, schedule_id="sealed")
    # The queue moves to k-new; this worker holds k-new only (k-old was thrown away).
    await m_old.add_key(KeyConfig("k-new", K2))
    await m_old.rotate_key("k-old", "k-new")
    w = rq("gone", dlq={"enabled": True}, worker={"concurrency": 2})
    EncryptionManager(w, keys=[KeyConfig("k-new", K2)], run_rotation=False, missing_key_wait_ms=0)
    ran: list[object] = []
    w.process("t", lambda job: ran.append(job.data))
    w.process("plain", lambda job: ran.append(job.data))
    await w.schedule_every("plain", {"p": 1}, 100, schedule_id="plain")
    caplog.set_level(logging.DEBUG)
    await w.start()
    dead = await wait_until(lambda: _dlq_with(w, "sched:sealed:"), timeout=10)
    assert "'k-old'" in (dead.failed_reason or "")
    await wait_until(lambda: len([d for d in ran if d == {"p": 1}]) >= 3, timeout=10)
    assert all(MARK not in str(d) for d in ran)
    logs = "\n".join(r.getMessage() for r in caplog.records)
    assert MARK not in logs and K1 not in logs and K2 not in logs


async def _dlq_with(q: JobQueue, head: str) -> object:
    for info in await q.get_dlq_jobs(100):
        if info.id.startswith(head):
            return info
    return None


async def test_a_bit_flipped_ciphertext_is_dead_lettered_and_the_worker_goes_on(
    rq: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q = rq("flip", dlq={"enabled": True}, worker={"concurrency": 2})
    EncryptionManager(q, keys=[KeyConfig("k1", K1)], run_rotation=False)
    ran: list[object] = []
    q.process("x", lambda job: ran.append(job.data))
    victim = await q.add_job("x", {"s": MARK}, encrypted=True, job_id="victim")
    raw = await redis_client.hget(q.keys.job(victim), "d")
    env = orjson.loads(raw)
    ct = bytearray(env["ct"].encode())
    ct[20] = ord("A") if ct[20] != ord("A") else ord("B")  # one base64 digit: flipped bits
    env["ct"] = ct.decode()
    await redis_client.hset(q.keys.job(victim), "d", orjson.dumps(env))
    ok = await q.add_job("x", {"s": "fine"}, encrypted=True)
    await q.start()
    info = await wait_for_status(q, victim, JobStatus.DLQ, timeout=10)
    assert "failed authentication" in (info.failed_reason or "")
    assert "'k1'" in (info.failed_reason or "")
    await wait_for_status(q, ok, JobStatus.COMPLETED, timeout=10)
    assert ran == [{"s": "fine"}]


async def test_a_schedule_switched_to_plaintext_keeps_its_data_not_the_envelope(
    rq: QueueFactory, redis_client: aioredis.Redis
) -> None:
    """``update_schedule(id, encrypted=False)`` stored the sealed template (read back as
    its envelope) as the plaintext data: every tick's processor got the envelope."""
    q = rq("plainer", worker={"concurrency": 2})
    EncryptionManager(q, keys=[KeyConfig("k1", K1)], run_rotation=False)
    got: list[object] = []
    q.process("t", lambda job: got.append(job.data))
    s = await q.schedule_every("t", {"s": MARK}, 100, encrypted=True, schedule_id="p")
    await q.update_schedule(s.id, encrypted=False)
    raw = orjson.loads(await redis_client.hget(q.keys.schedule(s.id), "d"))
    assert raw == {"s": MARK}
    await q.start()
    await wait_until(lambda: len(got) >= 2, timeout=10)
    assert got[0] == {"s": MARK}
    # And back: sealed again, the ticks open it.
    await q.update_schedule(s.id, encrypted=True)
    raw = orjson.loads(await redis_client.hget(q.keys.schedule(s.id), "d"))
    assert raw["for"] == "schedule" and MARK not in str(raw)
    n = len(got)
    await wait_until(lambda: len(got) >= n + 2, timeout=10)
    assert got[-1] == {"s": MARK}
