"""Options are honoured, refused or reported exactly (issue 11, item 6): the connection
settings ``retry_strategy`` / ``enable_ready_check``, a misspelt schedule option, and
``JobInfo.options`` showing every option a job was added with. (The feature options'
messages: tests/test_options.py; an unknown custom backoff: tests/test_worker_behaviour.py.)"""

from __future__ import annotations

from typing import Any

import pytest

from helpers import QueueFactory, wait_until
from kitium_queue import ConfigurationError, JobQueue, JobStatus
from kitium_queue.connection import ConnectionFactory


def test_retry_strategy_is_refused_with_what_happens_instead() -> None:
    with pytest.raises(ConfigurationError) as info:
        ConnectionFactory({"host": "h", "retry_strategy": lambda times: min(times * 50, 2000)})
    msg = str(info.value)
    assert "'retry_strategy' is not supported" in msg and "reconnecting is built in" in msg
    assert "retry=Retry(" in msg
    with pytest.raises(ConfigurationError, match="retry_strategy"):
        JobQueue("q", redis={"host": "h", "retry_strategy": lambda times: 100})


def test_enable_ready_check_true_is_honoured_false_is_refused() -> None:
    assert ConnectionFactory({"host": "h", "enable_ready_check": True}).describe() == "h:6379"
    with pytest.raises(ConfigurationError, match=r"enable_ready_check=False: the queue always"):
        ConnectionFactory({"host": "h", "enable_ready_check": False})


async def test_misspelt_schedule_option_is_an_unknown_schedule_option(
    make_queue: QueueFactory,
) -> None:
    q = make_queue()
    with pytest.raises(ConfigurationError) as info:
        await q.schedule_every("beat", {}, 60_000, misfir="skip")
    msg = str(info.value)
    assert msg.startswith("unknown schedule option: 'misfir' (did you mean 'misfire'?)"), msg
    with pytest.raises(ConfigurationError, match=r"'overlpa' \(did you mean 'overlap'\?\)"):
        await q.schedule_job("report", {}, "0 2 * * *", overlpa="skip")
    # A job option misspelt in a schedule gets its suggestion too.
    with pytest.raises(ConfigurationError, match=r"'atempts' \(did you mean 'attempts'\?\)"):
        await q.schedule_every("beat", {}, 60_000, atempts=3)
    sched = await q.schedule_every("beat", {}, 60_000, misfire="skip", attempts=3)
    with pytest.raises(
        ConfigurationError, match=r"unknown update_schedule option: 'misfir' \(did you mean"
    ):
        await q.update_schedule(sched.id, misfir="run_once")
    assert await q.get_schedules() == [sched]  # nothing changed


async def test_job_info_shows_every_option_it_was_added_with(make_queue: QueueFactory) -> None:
    q = make_queue()
    jid = await q.add_job(
        "send-email", {"to": "ada@example.com"}, attempts=5, delay=1000, priority=10
    )  # the quick start's call
    info = await q.get_job_status(jid)
    assert info is not None and info.status is JobStatus.DELAYED
    assert info.options == {"attempts": 5, "delay": 1000, "priority": 10}
    lifo = await q.add_job("n", {}, lifo=True, priority=3, job_id="mine-1")
    info = await q.get_job_status(lifo)
    assert info is not None and info.options == {"lifo": True, "priority": 3}  # id: info.id
    # The processor sees the same options.
    seen: list[dict[str, Any]] = []
    q.process("n", lambda job: seen.append(dict(job.options)))
    await q.start()
    await wait_until(lambda: seen)
    assert seen == [{"lifo": True, "priority": 3}]
