"""Schedules: declaration and validation, storage (CRUD, upsert), tick computation
(cron with seconds and time zones, intervals, misfire, jitter) and the fire script,
driven with an explicit clock (``Scheduler.run_due(now_ms)``) — plus the scheduler
service firing in real time. The multi-process guarantees are in
``test_schedule_leaderless.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from helpers import QueueFactory, wait_until
from kitium_queue import (
    ConfigurationError,
    JobQueue,
    JobStatus,
    Schedule,
    ScheduleNotFoundError,
)
from kitium_queue.features.scheduler import Scheduler, plan_ticks

# A fixed instant far ahead of the real clock: schedules anchored there never fire on
# their own, so tests drive every tick with run_due(now_ms).
T0 = 4_102_444_800_000  # 2100-01-01T00:00:00Z


async def _scheduler(q: JobQueue, seed: int = 1) -> Scheduler:
    s = Scheduler(rng=random.Random(seed))
    s.queue = q
    await q.client()
    return s


async def _sched_jobs(q: JobQueue) -> dict[str, Any]:
    out = {}
    for st in (JobStatus.WAITING, JobStatus.DELAYED, JobStatus.ACTIVE, JobStatus.COMPLETED):
        for info in await q.get_jobs_by_status(st, 1000):
            if info.id.startswith("sched:"):
                out[info.id] = info
    return out


def _tick(job_id: str) -> int:
    return int(job_id.rsplit(":", 1)[1])


# ================================================================ declaration


@pytest.mark.parametrize(
    ("pattern", "fragment"),
    [
        ("61 * * * *", "invalid cron pattern '61 * * * *'"),
        ("* * * *", "4 field(s)"),
        ("* * * * * * *", "7 field(s)"),
        ("a b c d e", "invalid cron pattern 'a b c d e'"),
        ("*/0 * * * *", "invalid cron pattern"),
        ("", "non-empty string"),
        ("0 0 30 2 *", "never fires"),
    ],
)
async def test_malformed_cron_is_rejected_at_declaration(
    make_queue: QueueFactory, pattern: str, fragment: str
) -> None:
    q = make_queue()
    with pytest.raises(ConfigurationError) as err:
        await q.schedule_job("report", {}, pattern)
    assert fragment in str(err.value)
    assert await q.get_schedules() == []


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"tz": "Mars/Olympus_Mons"}, "unknown time zone 'Mars/Olympus_Mons'"),
        ({"misfire": "sometimes"}, "misfire must be"),
        ({"misfire": ("catch_up", 0)}, "misfire must be"),
        ({"overlap": "never"}, "overlap must be 'allow' or 'skip'"),
        ({"limit": 0}, "limit must be an int >= 1"),
        ({"job_id": "x"}, "may not set job_id"),
        ({"delay": 5}, "may not set delay"),
        ({"attemps": 3}, "did you mean 'attempts'"),
        ({"priority": -1}, "priority must be"),
        ({"start_date": "tomorrow"}, "start_date must be"),
        ({"start_date": T0 + 10, "end_date": T0}, "end_date"),
        ({"schedule_id": "a\nb"}, "schedule_id must be"),
    ],
)
async def test_bad_schedule_options_are_rejected(
    make_queue: QueueFactory, kwargs: dict[str, Any], fragment: str
) -> None:
    q = make_queue()
    with pytest.raises(ConfigurationError) as err:
        await q.schedule_job("report", {}, "*/5 * * * *", **kwargs)
    assert fragment in str(err.value)


async def test_bad_interval_is_rejected(make_queue: QueueFactory) -> None:
    q = make_queue()
    for bad in (0, 5, -100, "1s", None):
        with pytest.raises(ConfigurationError, match="interval_ms"):
            await q.schedule_every("beat", {}, bad)


async def test_redeclaring_upserts_instead_of_duplicating(make_queue: QueueFactory) -> None:
    q = make_queue()
    a = await q.schedule_job("report", {"v": 1}, "0  2 * * *")
    b = await q.schedule_job("report", {"v": 1}, "0 2 * * *")
    assert a.id == b.id == "report@0 2 * * *"
    assert b.updated_at == a.updated_at  # identical declaration: nothing written
    c = await q.schedule_job("report", {"v": 2}, "0 2 * * *")
    assert [s.id for s in await q.get_schedules()] == [a.id]
    assert c.data == {"v": 2} and c.next_run_at == a.next_run_at
    # A user-given id lets the timing change in place: the next tick is recomputed.
    d = await q.schedule_every("beat", None, 60_000, schedule_id="beat", start_date=T0)
    e = await q.schedule_every("beat", None, 30_000, schedule_id="beat", start_date=T0 + 5)
    assert d.next_run_at == T0 and e.next_run_at == T0 + 5
    assert sorted(s.id for s in await q.get_schedules()) == sorted([a.id, "beat"])
    assert (await q.schedule_every("hb", None, timedelta(seconds=2))).id == "hb@every 2000ms"


async def test_schedules_survive_a_new_queue_object(backend_url: str, prefix: str) -> None:
    q1 = JobQueue("q", redis=backend_url, prefix=prefix)
    await q1.schedule_every("beat", {"x": 1}, 1000, attempts=5, priority=7)
    await q1.close()
    q2 = JobQueue("q", redis=backend_url, prefix=prefix)
    try:
        (s,) = await q2.get_schedules()
        assert s.job_name == "beat" and s.data == {"x": 1} and s.every_ms == 1000
        assert s.options == {"attempts": 5, "priority": 7}
    finally:
        await q2.close()


async def test_get_update_pause_resume_remove(make_queue: QueueFactory) -> None:
    q = make_queue()
    s = await q.schedule_job("report", {"a": 1}, "*/5 * * * *", schedule_id="r", attempts=2)
    got = await q.get_schedule("r")
    assert (
        isinstance(got, Schedule) and got.cron == "*/5 * * * *" and got.options == {"attempts": 2}
    )
    up = await q.update_schedule("r", cron_pattern="0 * * * *", attempts=4, overlap="skip")
    assert up.cron == "0 * * * *" and up.options == {"attempts": 4} and up.overlap == "skip"
    assert up.next_run_at is not None and up.next_run_at % 3_600_000 == 0
    assert up.data == {"a": 1} and up.runs == 0
    up2 = await q.update_schedule("r", data={"a": 2}, attempts=None)
    assert up2.data == {"a": 2} and up2.options == {} and up2.next_run_at == up.next_run_at

    assert await q.pause_schedule("r") is True
    paused = await q.get_schedule("r")
    assert paused is not None and paused.paused
    client = await q.client()
    assert await client.zscore(q.keys.schedules_due, "r") is None
    # Re-declaring a paused schedule keeps it paused (an operator's pause outlives deploys).
    await q.schedule_job("report", {"a": 3}, "0 * * * *", schedule_id="r")
    assert (await q.get_schedule("r")).paused  # type: ignore[union-attr]
    assert await q.resume_schedule("r") is True
    resumed = await q.get_schedule("r")
    assert resumed is not None and not resumed.paused
    assert await client.zscore(q.keys.schedules_due, "r") == resumed.next_run_at

    assert await q.remove_schedule("r") is True
    assert await q.get_schedule("r") is None
    assert await q.remove_schedule("r") is False
    assert await q.pause_schedule("r") is False
    assert await q.resume_schedule("r") is False
    with pytest.raises(ScheduleNotFoundError, match="'r' does not exist"):
        await q.update_schedule("r", attempts=1)
    assert s.id == "r"


# ================================================================ timing


async def test_cron_with_seconds_time_zone_and_dates(make_queue: QueueFactory) -> None:
    q = make_queue()
    s = await q.schedule_job("fast", None, "*/15 * * * * *")
    assert s.next_run_at is not None and s.next_run_at % 15_000 == 0
    berlin = ZoneInfo("Europe/Berlin")
    start = datetime(2100, 7, 1, 0, 0)  # naive: read in the schedule's time zone
    r = await q.schedule_job("report", None, "0 2 * * *", tz="Europe/Berlin", start_date=start)
    assert r.tz == "Europe/Berlin"
    want = datetime(2100, 7, 1, 2, 0, tzinfo=berlin)  # 00:00 UTC in summer
    assert r.next_run_at == int(want.timestamp() * 1000)
    assert r.start_date == int(start.replace(tzinfo=berlin).timestamp() * 1000)
    timing = r.timing()
    winter = int(datetime(2100, 1, 10, 12, tzinfo=timezone.utc).timestamp() * 1000)
    assert timing.next_after(winter) is not None  # end_date None: never ends
    assert timing.prev_at_or_before(winter) is None  # before start_date
    ended = await q.schedule_job("old", None, "0 2 * * *", end_date=datetime(2001, 1, 1))
    assert ended.finished and ended.next_run_at is None


def test_interval_ticks_align_on_the_start_date() -> None:
    defn = {"every_ms": 1000, "start_date": 500, "misfire_grace_ms": 1000}
    ticks, nxt = plan_ticks(defn, 1500, 1700, random.Random(0))
    assert ticks == [(1500, 1500)] and nxt == 2500


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("skip", [T0 + 10_000]),
        ("run_once", [T0 + 9_000, T0 + 10_000]),
        (("catch_up", 3), [T0 + 7_000, T0 + 8_000, T0 + 9_000, T0 + 10_000]),
        (("catch_up", 50), [T0 + k * 1000 for k in range(11)]),
    ],
)
def test_plan_ticks_misfire_policies(policy: Any, expected: list[int]) -> None:
    from kitium_queue.features.schedules import _misfire

    name, limit = _misfire(policy)
    defn = {
        "every_ms": 1000,
        "start_date": T0,
        "misfire": name,
        "catch_up_limit": limit,
        "misfire_grace_ms": 1000,
    }
    # Down for 10.5 s: T0 .. T0+9000 are missed, T0+10000 is within the grace period.
    ticks, nxt = plan_ticks(defn, T0, T0 + 10_500, random.Random(0))
    assert [t for t, _ in ticks] == expected
    assert nxt == T0 + 11_000


def test_plan_ticks_grace_keeps_short_delays_on_time() -> None:
    defn = {"every_ms": 100, "misfire": "skip", "misfire_grace_ms": 1000}
    # 450 ms late on a 100 ms schedule: every tick is within the grace period.
    ticks, nxt = plan_ticks(defn, T0, T0 + 450, random.Random(0))
    assert [t for t, _ in ticks] == [T0, T0 + 100, T0 + 200, T0 + 300, T0 + 400]
    assert nxt == T0 + 500


@pytest.mark.parametrize(("period", "jitter"), [(1000, 300), (1000, 5000), (200, 199)])
def test_jitter_stays_within_bounds_and_before_the_next_tick(period: int, jitter: int) -> None:
    defn = {
        "every_ms": period,
        "jitter_ms": jitter,
        "misfire_grace_ms": 10 * period,
        "misfire": "run_once",
    }
    rng = random.Random(42)
    offsets = []
    for k in range(2000):
        tick = T0 + k * period
        ticks, nxt = plan_ticks(defn, tick, tick, rng)
        assert len(ticks) == 1 and ticks[0][0] == tick and nxt == tick + period
        offsets.append(ticks[0][1] - tick)
    cap = min(jitter, period - 1)
    assert min(offsets) >= 0 and max(offsets) <= cap
    assert max(offsets) > cap * 0.9 and min(offsets) < cap * 0.1  # spread over the range
    # Several ticks at once (catch-up): each run still starts before the following tick.
    ticks, _ = plan_ticks({**defn, "misfire_grace_ms": 100 * period}, T0, T0 + 20 * period, rng)
    for (t, start), (t2, _) in itertools.pairwise(ticks):
        assert t <= start < t2


# ================================================================ fire (explicit clock)


async def test_each_tick_fires_once_with_a_deterministic_job_id(make_queue: QueueFactory) -> None:
    q = make_queue()
    s = await q.schedule_every("beat", {"n": 1}, 1000, start_date=T0, attempts=4, priority=9)
    sch = await _scheduler(q)
    assert await sch.run_due(T0 - 1) == 1  # not due yet: 1 ms to go
    assert await sch.run_due(T0) == 1000
    assert await sch.run_due(T0 + 10) == 990  # already fired: nothing more
    jobs = await _sched_jobs(q)
    assert list(jobs) == [f"sched:{s.id}:{T0}"]
    info = jobs[f"sched:{s.id}:{T0}"]
    assert info.name == "beat" and info.data == {"n": 1} and info.priority == 9
    assert info.max_attempts == 4
    await sch.run_due(T0 + 1000)
    assert sorted(_tick(i) for i in await _sched_jobs(q)) == [T0, T0 + 1000]
    st = await q.get_schedule(s.id)
    assert st is not None and st.runs == 2 and st.last_run_at == T0 + 1000
    assert st.last_job_id == f"sched:{s.id}:{T0 + 1000}" and st.next_run_at == T0 + 2000


async def test_racing_schedulers_fire_a_tick_once(backend_url: str, prefix: str) -> None:
    queues = [JobQueue("q", redis=backend_url, prefix=prefix) for _ in range(6)]
    try:
        await queues[0].schedule_every("beat", None, 1000, start_date=T0)
        scheds = [await _scheduler(q, seed=i) for i, q in enumerate(queues)]
        for k in range(5):
            await asyncio.gather(*(s.run_due(T0 + k * 1000) for s in scheds))
        assert sum(s.fired for s in scheds) == 5
        assert sorted(_tick(i) for i in await _sched_jobs(queues[0])) == [
            T0 + k * 1000 for k in range(5)
        ]
        fired = [e for e in await _stream(queues[0]) if e["e"] == "schedule-fired"]
        assert len(fired) == 5
    finally:
        for q in queues:
            await q.close()


async def _stream(q: JobQueue) -> list[dict[str, str]]:
    client = await q.client()
    return [
        {k.decode(): v.decode() for k, v in f.items()}
        for _, f in await client.xrange(q.keys.events)
    ]


async def test_misfire_policies_after_downtime(make_queue: QueueFactory) -> None:
    q = make_queue()
    for policy, sid in (("skip", "s"), ("run_once", "o"), (("catch_up", 3), "c")):
        await q.schedule_every("beat", None, 1000, start_date=T0, misfire=policy, schedule_id=sid)
    sch = await _scheduler(q)
    assert await sch.run_due(T0 + 10_500) == 500
    by: dict[str, list[int]] = {"s": [], "o": [], "c": []}
    for jid in await _sched_jobs(q):
        by[jid.split(":")[1]].append(_tick(jid))
    assert sorted(by["s"]) == [T0 + 10_000]
    assert sorted(by["o"]) == [T0 + 9_000, T0 + 10_000]
    assert sorted(by["c"]) == [T0 + 7_000, T0 + 8_000, T0 + 9_000, T0 + 10_000]
    for sid in "soc":
        st = await q.get_schedule(sid)
        assert st is not None and st.next_run_at == T0 + 11_000


async def test_overlap_skip_waits_for_the_previous_run(make_queue: QueueFactory) -> None:
    q = make_queue(worker={"scheduler": False})
    release = asyncio.Event()

    @q.process("slow")
    async def slow(job: Any) -> None:
        await release.wait()

    await q.schedule_every("slow", None, 1000, start_date=T0, overlap="skip", schedule_id="skip")
    await q.schedule_every("slow", None, 1000, start_date=T0, schedule_id="allow")
    sch = await _scheduler(q)
    await sch.run_due(T0)
    await q.start()
    first = f"sched:skip:{T0}"
    await wait_until(lambda: _status(q, first, JobStatus.ACTIVE))
    await sch.run_due(T0 + 1000)  # skip: previous run active -> skipped; allow: fires
    st = await q.get_schedule("skip")
    assert st is not None and st.skipped == 1 and st.runs == 1
    allow = await q.get_schedule("allow")
    assert allow is not None and allow.runs == 2
    release.set()
    await wait_until(lambda: _status(q, first, JobStatus.COMPLETED))
    await sch.run_due(T0 + 2000)
    st = await q.get_schedule("skip")
    assert st is not None and st.runs == 2 and st.last_run_at == T0 + 2000
    skipped = [e for e in await _stream(q) if e["e"] == "schedule-skipped"]
    assert [e["id"] for e in skipped] == ["skip"]


async def _status(q: JobQueue, job_id: str, status: JobStatus) -> bool:
    info = await q.get_job_status(job_id)
    return info is not None and info.status is status


async def test_run_limit_and_end_date_finish_a_schedule(make_queue: QueueFactory) -> None:
    q = make_queue()
    await q.schedule_every("a", None, 1000, start_date=T0, limit=2, schedule_id="lim")
    await q.schedule_every("b", None, 1000, start_date=T0, end_date=T0 + 2000, schedule_id="end")
    sch = await _scheduler(q)
    for k in range(5):
        await sch.run_due(T0 + k * 1000)
    ticks = sorted((j.split(":")[1], _tick(j)) for j in await _sched_jobs(q))
    assert ticks == [
        ("end", T0),
        ("end", T0 + 1000),
        ("end", T0 + 2000),
        ("lim", T0),
        ("lim", T0 + 1000),
    ]
    for sid, runs in (("lim", 2), ("end", 3)):
        st = await q.get_schedule(sid)
        assert st is not None and st.finished and st.runs == runs and st.next_run_at is None
    # Raising the limit revives it at the next tick from now.
    up = await q.update_schedule("lim", limit=3)
    assert not up.finished and up.next_run_at is not None


async def test_jitter_delays_each_run_within_bounds(make_queue: QueueFactory) -> None:
    q = make_queue()
    await q.schedule_every("j", None, 1000, start_date=T0, jitter=300, schedule_id="j")
    await q.schedule_every("k", None, 1000, start_date=T0, jitter=60_000, schedule_id="k")
    sch = await _scheduler(q)
    for k in range(30):
        await sch.run_due(T0 + k * 1000)
    jobs = await _sched_jobs(q)
    assert len(jobs) == 60
    for jid, info in jobs.items():
        tick = _tick(jid)
        start = info.delayed_until or tick  # a zero jitter leaves the job waiting
        cap = 300 if jid.startswith("sched:j:") else 999
        assert 0 <= start - tick <= cap, (jid, start - tick)
    spread = [
        (j.delayed_until or _tick(i)) - _tick(i)
        for i, j in jobs.items()
        if i.startswith("sched:k:")
    ]
    assert max(spread) > 500  # a jitter above the period is capped, not ignored


# ================================================================ the service


async def test_scheduler_service_fires_on_time(make_queue: QueueFactory) -> None:
    q = make_queue()
    started: dict[str, float] = {}

    @q.process("beat")
    async def beat(job: Any) -> None:
        started[job.id] = time.time() * 1000

    await q.start()
    # Declared after the worker started: the scheduler learns of it through pub/sub.
    # The first tick a whole second ahead at least: one due a few ms after it is declared
    # is late by the time the news takes to travel (216 ms once, in a whole suite run).
    anchor = (int(time.time() * 1000) // 1000 + 2) * 1000
    await q.schedule_every("beat", None, 250, start_date=anchor)
    await wait_until(lambda: len(started) >= 6, timeout=8)
    ticks = sorted((_tick(i), t) for i, t in started.items())
    assert [t for t, _ in ticks[:6]] == [anchor + 250 * k for k in range(6)]
    lateness = [s - t for t, s in ticks]
    assert min(lateness) >= -5  # never early (clocks of Redis and this process agree)
    assert max(lateness) < 200, lateness


async def test_worker_without_scheduler_does_not_fire(make_queue: QueueFactory) -> None:
    q = make_queue(worker={"scheduler": False})
    q.process("beat", lambda job: None)
    await q.start()
    assert not any(s.name == "scheduler" for s in q.services), q.services
    s = await q.schedule_every("beat", None, 100)
    await asyncio.sleep(0.4)
    got = await q.get_schedule(s.id)
    assert got is not None and got.runs == 0


def test_sync_client_declares_and_manages_schedules(backend_url: str, prefix: str) -> None:
    from kitium_queue import SyncJobQueue

    with SyncJobQueue("q", redis=backend_url, prefix=prefix) as q:
        s = q.schedule_job("report", {"a": 1}, "0 3 * * *", schedule_id="nightly")
        assert q.schedule_every("beat", None, 5000).id == "beat@every 5000ms"
        assert sorted(x.id for x in q.get_schedules()) == ["beat@every 5000ms", "nightly"]
        assert q.update_schedule("nightly", attempts=2).options == {"attempts": 2}
        assert q.pause_schedule("nightly") and q.get_schedule("nightly").paused  # type: ignore[union-attr]
        assert q.resume_schedule("nightly") and q.remove_schedule("nightly")
        assert q.get_schedule(s.id) is None
