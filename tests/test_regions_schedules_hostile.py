"""Damaged schedule and region records, and schedules that fire very often or across a
daylight saving time change.

The scheduler fires every schedule that is sound and reports, without firing it, one
whose record was damaged by hand (a key of another type, a hash without its version, an
id that is not UTF-8, a definition holding values no declaration accepts): it neither
stops every other schedule, nor finishes the damaged one silently, nor fires it on
every round. A fixed-hour cron pattern runs once in the hour the clocks repeat. The
copy of the schedules to the other regions, and ``regions status`` of one copy, read
past a damaged record too.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
import redis
from click.testing import CliRunner

from helpers import QueueFactory
from kitium_queue import JobQueue
from kitium_queue.cli import main
from kitium_queue.features.regions.lua import install
from kitium_queue.features.regions.replication import copy_schedules
from kitium_queue.features.scheduler import MAX_TICKS_PER_FIRE, Scheduler, plan_ticks

pytestmark = pytest.mark.redis_only

# Far ahead of the real clock: schedules anchored there fire only through run_due(now).
T0 = 4_102_444_800_000  # 2100-01-01T00:00:00Z
SCHED_LOG = "kitium_queue.features.scheduler"


async def _scheduler(q: JobQueue) -> Scheduler:
    s = Scheduler(rng=random.Random(1))
    s.queue = q
    await q.client()
    return s


async def _fired(q: JobQueue, sid: str) -> list[str]:
    client = await q.client()
    return sorted({k.decode() async for k in client.scan_iter(q.keys.job(f"sched:{sid}:*"))})


async def _two(q: JobQueue) -> None:
    """Schedules ``good`` and ``bad`` every minute from T0."""
    for sid in ("good", "bad"):
        await q.schedule_every("n", {}, 60_000, schedule_id=sid, start_date=T0)


async def _patch(q: JobQueue, sid: str, **fields: Any) -> None:
    client = await q.client()
    key = q.keys.schedule(sid)
    defn = orjson.loads(await client.hget(key, "def"))
    defn.update(fields)
    await client.hset(key, "def", orjson.dumps(defn))


@pytest.mark.parametrize("damage", ["another type", "no version"])
async def test_a_damaged_schedule_key_does_not_stop_every_schedule(
    make_queue: QueueFactory, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    q = make_queue("sdmg")
    await _two(q)
    client = await q.client()
    if damage == "another type":
        await client.delete(q.keys.schedule("bad"))
        await client.set(q.keys.schedule("bad"), "written by hand")
    else:
        await client.hdel(q.keys.schedule("bad"), "v")
    sch = await _scheduler(q)
    with caplog.at_level(logging.ERROR, logger=SCHED_LOG):
        await sch.run_due(T0)
    assert await _fired(q, "good") == [q.keys.job(f"sched:good:{T0}")]
    assert await _fired(q, "bad") == []
    assert "schedule 'bad' does not fire: its record is damaged" in caplog.text
    assert "remove the schedule and declare it again" in caplog.text
    # Reported, not dropped: it stays due, so it is reported again until removed.
    assert await client.zscore(q.keys.schedules_due, "bad") is not None


async def test_a_schedule_id_that_is_not_utf8_does_not_stop_every_schedule(
    make_queue: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    q = make_queue("sutf")
    await _two(q)
    client = await q.client()
    raw = await client.hgetall(q.keys.schedule("bad"))
    member = b"x\xff"
    await client.hset(q.keys.schedule("").encode() + member, mapping=raw)
    await client.zadd(q.keys.schedules_due, {member: T0})
    sch = await _scheduler(q)
    with caplog.at_level(logging.ERROR, logger=SCHED_LOG):
        await sch.run_due(T0)
    assert await _fired(q, "good") == [q.keys.job(f"sched:good:{T0}")]
    assert "its id is not valid UTF-8" in caplog.text


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"every_ms": -5}, "every_ms must be 10 to"),
        ({"every_ms": 3}, "every_ms must be 10 to"),
        ({"every_ms": None, "cron": "not a cron"}, "cron is not a valid cron pattern"),
        ({"tz": "Mars/Base\x1b[2J"}, "tz is not an IANA time zone"),
    ],
)
async def test_a_definition_no_declaration_accepts_is_reported_not_fired(
    make_queue: QueueFactory, caplog: pytest.LogCaptureFixture, fields: dict[str, Any], needle: str
) -> None:
    q = make_queue("sdef")
    await _two(q)
    await _patch(q, "bad", **fields)
    sch = await _scheduler(q)
    with caplog.at_level(logging.ERROR, logger=SCHED_LOG):
        for k in range(3):  # a few rounds: a damaged interval fired on every one before
            await sch.run_due(T0 + k)
    assert await _fired(q, "good") == [q.keys.job(f"sched:good:{T0}")]
    assert await _fired(q, "bad") == []
    bad = await q.schedules.get("bad")
    assert bad is not None and not bad.finished  # not silently finished
    assert bad.damaged is not None and needle in bad.damaged
    assert needle in caplog.text and "\x1b" not in caplog.text
    with pytest.raises(Exception, match="damaged record"):
        await q.resume_schedule("bad")


async def test_a_fast_schedule_far_behind_fires_its_latest_ticks_not_nothing(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("sfast")
    s = await q.schedule_every("n", {}, 10, start_date=T0, misfire_grace=60_000)
    defn = s.definition()
    ticks, nxt = plan_ticks(defn, T0, T0 + 20_000, random.Random(0))
    assert len(ticks) == MAX_TICKS_PER_FIRE and ticks[-1][0] == T0 + 20_000
    sch = await _scheduler(q)
    await sch.run_due(T0 + 20_000)
    fired = await _fired(q, s.id)
    assert len(fired) == MAX_TICKS_PER_FIRE
    assert q.keys.job(f"sched:{s.id}:{T0 + 20_000}") in fired
    await sch.run_due(T0 + 20_000)  # the same moment again: nothing twice
    assert len(await _fired(q, s.id)) == MAX_TICKS_PER_FIRE
    got = await q.schedules.get(s.id)
    assert got is not None and got.next_run_at == nxt == T0 + 20_010


def _ms(*args: int, fold: int = 0) -> int:
    tz = ZoneInfo("America/New_York")
    return int(datetime(*args, tzinfo=tz, fold=fold).timestamp() * 1000)


async def test_a_fixed_hour_cron_fires_once_when_the_clocks_go_back(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("sdst")
    # 2030-11-03: New York goes from 01:59:59 EDT back to 01:00 EST.
    s = await q.schedule_job(
        "n", {}, "30 1 * * *", tz="America/New_York", start_date=_ms(2030, 11, 2, 12)
    )
    first, second = _ms(2030, 11, 3, 1, 30), _ms(2030, 11, 3, 1, 30, fold=1)
    assert second - first == 3_600_000
    assert s.next_run_at == first
    sch = await _scheduler(q)
    await sch.run_due(first)
    got = await q.schedules.get(s.id)
    assert got is not None and got.next_run_at == _ms(2030, 11, 4, 1, 30)
    await sch.run_due(second)  # 01:30 again, on the clock: not a second run
    assert await _fired(q, s.id) == [q.keys.job(f"sched:{s.id}:{first}")]
    # A wildcard hour still runs every real half hour through the repeated hour.
    every = await q.schedule_job(
        "n", {}, "*/30 * * * *", tz="America/New_York", start_date=_ms(2030, 11, 3, 0, 45)
    )
    timing = every.timing()
    t, seen = _ms(2030, 11, 3, 0, 45), []
    for _ in range(5):
        nxt = timing.next_after(t)
        assert nxt is not None
        seen.append(nxt)
        t = nxt
    assert [b - a for a, b in itertools.pairwise(seen)] == [1_800_000] * 4


async def test_copying_schedules_to_a_region_skips_a_damaged_record(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    source = JobQueue("rgs-src", redis=redis_url, prefix=prefix)
    target = JobQueue("rgs-dst", redis=redis_url, prefix=prefix)
    install(target, replicated=False)
    try:
        await _two(source)
        client = await source.client()
        await client.delete(source.keys.schedule("bad"))
        await client.set(source.keys.schedule("bad"), "written by hand")
        with caplog.at_level(logging.WARNING):
            for _ in range(3):  # the copy runs every few seconds
                await copy_schedules(source, target)
        assert [s.id for s in await target.get_schedules()] == ["good"]
        assert "another type" in caplog.text
        # Said once, not on every copy.
        assert caplog.text.count("schedule 'bad' not copied") == 1
    finally:
        await source.close()
        await target.close()


@pytest.mark.parametrize(
    ("record", "needle"),
    [
        ({"self": "eu", "primary": "eu", "epoch": "1", "lease": "soon"}, "lease is not a number"),
        (None, "another type"),
    ],
)
def test_regions_status_of_a_copy_with_a_damaged_record(
    cli_app: str, redis_url: str, prefix: str, record: dict[str, str] | None, needle: str
) -> None:
    key = JobQueue("cli", redis=redis_url, prefix=prefix).keys.extra("rg")
    client = redis.Redis.from_url(redis_url)
    try:
        if record is None:
            client.set(key, "written by hand")
        else:
            client.hset(key, mapping=record)
    finally:
        client.close()
    # Shown, and exit 1: status is a probe, and no primary can be said to serve.
    got = CliRunner().invoke(main, ["regions", "status", cli_app, "--json"])
    assert got.exit_code == 1, got.output
    shown = json.loads(got.stdout)
    assert needle in shown["damaged"]
    plain = CliRunner().invoke(main, ["regions", "status", cli_app])
    assert plain.exit_code == 1, plain.output
    assert "damaged" in plain.stdout and "unexpected error" not in plain.output


async def test_a_region_record_with_bytes_that_are_not_utf8_is_read_not_a_dead_region(
    redis_url: str, prefix: str
) -> None:
    # Before: UnicodeDecodeError in Record.parse, so the health check saw the region as
    # unreachable (and a primary read that way could set off a failover).
    from kitium_queue.features.regions.config import RegionConfig
    from kitium_queue.features.regions.record import RegionCopy

    cfg = RegionConfig("eu", redis_url)
    copy = RegionCopy(cfg, f"{prefix}-rg", {"prefix": prefix}, timeout_s=5.0)
    try:
        first = await copy.check()
        assert first is not None and copy.reachable
        client = await copy.lane.client()
        await client.hset(copy.lane.keys.extra("rg"), mapping={"vfor": b"\xff\xfe", "src": b"\x80"})
        rec = await copy.check()
        assert copy.reachable and rec is not None and rec.region == "eu"
        assert rec.vfor == "\\xff\\xfe" and rec.src == "\\x80"
    finally:
        await copy.close()


async def test_many_damaged_schedules_neither_starve_sound_ones_nor_spin(
    make_queue: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: schedule_due returned the first 100 due, all damaged, so the sound schedule
    # due later never fired, and the round asked to run again at once, for ever.
    q = make_queue("sstarve")
    client = await q.client()
    for i in range(120):
        sid = f"bad{i:03d}"
        await q.schedule_every("n", {}, 60_000, schedule_id=sid, start_date=T0)
        await client.hdel(q.keys.schedule(sid), "v")
    await q.schedule_every("n", {}, 60_000, schedule_id="good", start_date=T0 + 30_000)
    sch = await _scheduler(q)
    with caplog.at_level(logging.CRITICAL, logger=SCHED_LOG):
        waits = [await sch.run_due(T0 + 30_000) for _ in range(3)]
    assert await _fired(q, "good") == [q.keys.job(f"sched:good:{T0 + 30_000}")]
    assert all(w is not None and w >= 1000 for w in waits[1:]), waits
    assert await _fired(q, "bad000") == []
