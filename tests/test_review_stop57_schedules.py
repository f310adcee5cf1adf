"""Recurring schedules probed as a user leaving other schedulers would: a tick refused by
a feature (a quota) is logged as refused, not as an overlap skip; a misfire grace too
small to be met (a 'skip' schedule with none never ran) is refused, and one stored by an
earlier release fires; resuming a schedule that is not paused keeps its missed ticks for
the misfire policy; a zone read from a file is refused rather than stored as UTC; bad job
names, derived ids and update arguments get errors naming the fix; a long cron catch-up
is planned off the event loop. Against a real Redis, with the clock driven by
``Scheduler.run_due(now_ms)`` where it can be.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from helpers import QueueFactory, wait_until
from kitium_queue import ConfigurationError, JobQueue
from kitium_queue.features import scheduler as scheduler_module
from kitium_queue.features.scheduler import Scheduler, overdue_ms, plan_ticks
from kitium_queue.features.tenancy import TenantRegistry

# Far ahead of the real clock: schedules anchored there only fire when driven.
T0 = 4_102_444_800_000  # 2100-01-01T00:00:00Z


@pytest.fixture
async def queues(redis_url: str, prefix: str) -> AsyncIterator[QueueFactory]:
    factory = QueueFactory(redis_url, prefix)
    yield factory
    await factory.aclose()


async def _scheduler(q: JobQueue) -> Scheduler:
    s = Scheduler(rng=random.Random(7))
    s.queue = q
    await q.client()
    return s


async def test_a_tick_refused_by_a_quota_is_logged_as_refused_not_as_overlap(
    queues: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    q = queues("refused")
    reg = TenantRegistry(q)
    await reg.create_tenant({"tenant_id": "t", "quota": {"max_queue_size": 1}})
    await q.schedule_every("tick", {}, 1000, start_date=T0, schedule_id="s", tenant_id="t")
    s = await _scheduler(q)
    await s.run_due(T0 + 10)  # the first tick fills the quota
    caplog.set_level(logging.INFO, logger="kitium_queue")
    await s.run_due(T0 + 1010)  # the second is refused
    got = await q.get_schedule("s")
    assert got is not None and got.runs == 1
    messages = [r.getMessage() for r in caplog.records if "schedule s" in r.getMessage()]
    assert not any("still going" in m for m in messages), messages
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert refused and refused[0].levelno >= logging.WARNING, messages


@pytest.mark.parametrize(
    ("job_name", "pattern"),
    [("x{y}", "* * * * *"), ("a" * 195, "* * * * *")],
)
async def test_a_derived_schedule_id_that_cannot_be_stored_says_to_pass_one(
    queues: QueueFactory, job_name: str, pattern: str
) -> None:
    q = queues("derived")
    with pytest.raises(ConfigurationError, match="schedule_id="):
        await q.schedule_job(job_name, None, pattern)


async def test_a_misfire_grace_below_the_floor_is_refused_with_the_reason(
    queues: QueueFactory,
) -> None:
    q = queues("grace")
    for grace in (0, 5):
        with pytest.raises(ConfigurationError, match="misfire_grace must be >= 100 ms"):
            await q.schedule_every("t", None, 1000, misfire="skip", misfire_grace=grace)
    assert await q.get_schedules() == []


async def test_a_skip_schedule_stored_with_no_grace_still_fires_its_ticks(
    queues: QueueFactory,
) -> None:
    # An earlier release stored misfire_grace 0: a 'skip' schedule then dropped every
    # tick its scheduler handled even 1 ms late, i.e. all of them.
    q = queues("nograce")
    await q.schedule_every("t", None, 1000, start_date=T0, schedule_id="s", misfire="skip")
    client = await q.client()
    key = q.keys.schedule("s")
    raw = await client.hget(key, "def")
    assert raw is not None
    await client.hset(key, "def", raw.replace(b'"misfire_grace_ms":1000', b'"misfire_grace_ms":0'))
    stored = await q.get_schedule("s")
    assert stored is not None and stored.misfire_grace_ms == 0
    s = await _scheduler(q)
    for k in range(5):
        await s.run_due(T0 + k * 1000 + 3)  # each tick handled 3 ms late
    got = await q.get_schedule("s")
    assert got is not None and got.runs == 5


async def test_a_zone_read_from_a_file_is_refused_not_stored_as_utc(
    queues: QueueFactory,
) -> None:
    # ZoneInfo.from_file has no key: it was stored as no zone, and the schedule ran in UTC.
    path = Path("/usr/share/zoneinfo/Asia/Tokyo")
    if not path.exists():
        pytest.skip("no system zoneinfo database")
    with path.open("rb") as f:
        zone = ZoneInfo.from_file(f)
    q = queues("zonefile")
    with pytest.raises(ConfigurationError, match="name the zone"):
        await q.schedule_job("x", None, "0 9 * * *", tz=zone)
    assert await q.get_schedules() == []
    s = await q.schedule_job("x", None, "0 9 * * *", tz=ZoneInfo("Asia/Tokyo"))
    assert s.tz == "Asia/Tokyo"


async def test_update_refuses_both_a_pattern_and_an_interval(queues: QueueFactory) -> None:
    q = queues("both")
    await q.schedule_every("t", None, 1000, schedule_id="s")
    with pytest.raises(ConfigurationError, match="not both"):
        await q.update_schedule("s", interval_ms=2000, cron_pattern="* * * * *")
    with pytest.raises(ConfigurationError, match="cron_pattern"):  # listed as valid
        await q.update_schedule("s", cron="* * * * *")
    got = await q.get_schedule("s")
    assert got is not None and got.every_ms == 1000


async def test_resuming_a_schedule_that_is_not_paused_keeps_its_missed_ticks(
    queues: QueueFactory,
) -> None:
    # No scheduler ran while the ticks fell due; an operator's resume of the (active)
    # schedule moved it to the next tick from now, so catch_up enqueued none of them.
    q = queues("resume")
    await q.schedule_every("t", None, 100, schedule_id="s", misfire=("catch_up", 5))

    async def overdue() -> bool:
        return (await overdue_ms(q) or 0) > 1500

    await wait_until(overdue, 30)
    assert await q.resume_schedule("s")
    s = await _scheduler(q)
    await s.run_due()
    got = await q.get_schedule("s")
    assert got is not None and got.runs >= 5


async def test_a_job_name_with_control_characters_is_reported_as_the_job_name(
    queues: QueueFactory,
) -> None:
    q = queues("badname")
    with pytest.raises(ConfigurationError, match=r"^job name must be"):
        await q.schedule_every("a\x1b[31mred", None, 1000)


async def test_a_long_cron_catch_up_is_planned_off_the_event_loop(
    queues: QueueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 1,000 late ticks of a per-second cron take about a second of croniter calls: on
    # the event loop they held the worker's lease renewals and every other task.
    q = queues("catchup")
    await q.schedule_job(
        "c", None, "* * * * * *", start_date=T0, schedule_id="c", misfire=("catch_up", 1000)
    )
    threads: list[int] = []

    def recording(*args: Any) -> Any:
        threads.append(threading.get_ident())
        return plan_ticks(*args)

    monkeypatch.setattr(scheduler_module, "plan_ticks", recording)
    s = await _scheduler(q)
    await s.run_due(T0 + 1200 * 1000)
    assert threads and threading.get_ident() not in threads
    got = await q.get_schedule("c")
    assert got is not None and got.runs == 1000


async def test_an_on_time_cron_tick_is_planned_in_the_round(
    queues: QueueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = queues("ontime")
    await q.schedule_job("c", None, "* * * * * *", start_date=T0, schedule_id="c")
    threads: list[int] = []

    def recording(*args: Any) -> Any:
        threads.append(threading.get_ident())
        return plan_ticks(*args)

    monkeypatch.setattr(scheduler_module, "plan_ticks", recording)
    s = await _scheduler(q)
    await s.run_due(T0 + 5)
    assert threads == [threading.get_ident()]
