"""Messages that misled (stop 61), each checked against a real Redis where a queue is
involved:

1. a job gone when its held outcome reaches a Redis that restarted without persistence
   was blamed on ``clear(force=True)`` or an erasure only: the warning after an outage
   names Redis' lost data first, the per-job line and the lease renewal's name it too;
2. a misspelt cron alias (``@dialy``) got croniter's "Exactly 5, 6 or 7 columns"
   (7 fields are refused here): the closest alias is suggested, with the forms accepted;
3. ``settings={"max_payload_bytes": ...}`` did not say it is a ``JobQueue`` keyword;
4. a dict key ``True`` was refused with the example "(1 as '1')", and an int out of
   range did not say where in the data it is;
5. a result above ``max_payload_bytes`` was dead-lettered as a ``RuntimeError``;
6. an APP module that ran ``asyncio.run(queue.add_job(...))`` at import made the CLI say
   "unexpected error: RuntimeError ...";
7. two ``schedule_job`` calls of the same derived id replaced each other in silence.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from _redis import RedisServer
from helpers import app_module, wait_until
from kitium_queue import JobQueue, QueueConfig
from kitium_queue.cli import main
from kitium_queue.codec import encode_progress
from kitium_queue.errors import ConfigurationError, SerializationError
from kitium_queue.features.schedules import check_cron
from kitium_queue.hooks import Outcome, Subscriber
from kitium_queue.options import QueueSettings

DATA_LOST = "Redis lost its data"


def _said(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


# ---------------------------------------------------------------------- 1. lost data
@pytest.fixture
async def lone_server() -> AsyncIterator[RedisServer]:
    """A redis-server without persistence (``--save ""``, no AOF) the test restarts."""
    srv = RedisServer().start()
    try:
        yield srv
    finally:
        srv.close()


async def test_outcomes_held_through_a_restart_without_persistence_name_the_lost_data(
    lone_server: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Jobs finish while Redis is down; it comes back empty (no persistence): one
    warning names those jobs and Redis' lost data as the likely cause, not a clear."""
    caplog.set_level(logging.INFO, logger="kitium_queue")
    q = JobQueue("lost", redis=lone_server.url, prefix=prefix, worker={"scheduler": False})
    gate, started = asyncio.Event(), []

    @q.process("x")
    async def x(job: Any) -> str:
        started.append(job.id)
        await gate.wait()
        return job.id

    try:
        ids = [await q.add_job("x", {"i": i}) for i in range(3)]
        await q.start(concurrency=3)
        await wait_until(lambda: len(started) == 3)
        await asyncio.to_thread(lone_server.stop)  # its data goes with it
        gate.set()  # the outcomes are held while Redis is away
        # A finish round failed with them (each failure marks what is held).
        await wait_until(lambda: len(q.worker.outcomes._held_out) == 3, timeout=20)
        assert _said(caplog, "Redis unreachable")
        await asyncio.to_thread(lone_server.restart)
        gone = "were gone when it answered again"
        await wait_until(lambda: bool(_said(caplog, gone)), timeout=20)
    finally:
        await q.close()
    (record,) = _said(caplog, gone)
    text = record.getMessage()
    assert record.levelno == logging.WARNING
    assert "3 job(s)" in text and all(f"{jid} (C)" in text for jid in ids), text
    assert text.index(DATA_LOST) < text.index("cleared with force=True"), text
    assert "restart without persistence" in text and "replica" in text, text
    assert not _said(caplog, "was removed while it ran"), caplog.text


async def test_a_job_cleared_while_it_ran_names_every_cause_at_info(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """No outage: the per-job INFO line names the clear, the erasure and the lost data."""
    caplog.set_level(logging.INFO, logger="kitium_queue")
    q = JobQueue("cleared", redis=redis_url, prefix=prefix, worker={"scheduler": False})
    gate, started = asyncio.Event(), []

    @q.process("x")
    async def x(job: Any) -> None:
        started.append(job.id)
        await gate.wait()

    try:
        jid = await q.add_job("x", 1)
        await q.start(concurrency=1)
        await wait_until(lambda: started == [jid])
        await q.clear(force=True)
        gate.set()
        await wait_until(lambda: bool(_said(caplog, "was removed while it ran (cleared")))
    finally:
        await q.close()
    (record,) = _said(caplog, "was removed while it ran")
    assert record.levelno == logging.INFO
    assert DATA_LOST in record.getMessage() and "erased" in record.getMessage()
    assert not _said(caplog, "were gone when it answered again")


async def test_a_lease_renewal_that_finds_the_record_gone_names_the_lost_data(
    redis_url: str, prefix: str, redis_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="kitium_queue")
    q = JobQueue(
        "renewed",
        redis=redis_url,
        prefix=prefix,
        settings={"lock_duration": 400, "lock_renew_time": 50},
        worker={"scheduler": False},
    )
    gate, started = asyncio.Event(), []

    @q.process("x")
    async def x(job: Any) -> None:
        started.append(job.id)
        await gate.wait()

    try:
        jid = await q.add_job("x", 1)
        await q.start(concurrency=1)
        await wait_until(lambda: started == [jid])
        await redis_client.delete(q.keys.job(jid))
        await wait_until(lambda: bool(_said(caplog, "abandoning this run")))
    finally:
        gate.set()
        await q.close()
    (record,) = _said(caplog, "abandoning this run")
    assert DATA_LOST in record.getMessage() and "evicted" in record.getMessage()


# ---------------------------------------------------------------------- 2. cron aliases
@pytest.mark.parametrize(
    ("pattern", "said"),
    [
        ("@dialy", "unknown alias (did you mean '@daily'?)"),
        ("@hourley", "unknown alias (did you mean '@hourly'?)"),
        ("@reboot", "unknown alias;"),
        ("@daily 5", "an alias takes no fields after it"),
        ("0 0 2 * * * 2027", "it has 7 field(s)"),
    ],
)
def test_a_cron_pattern_refused_for_its_form_says_what_is_accepted(pattern: str, said: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        check_cron(pattern)
    text = str(err.value)
    assert said in text, text
    assert "columns" not in text, text  # croniter's "Exactly 5, 6 or 7 columns"
    assert "5 fields (minute hour" in text and "6 with seconds first" in text, text
    assert "@daily" in text and "@midnight" in text, text


@pytest.mark.parametrize("alias", ["@daily", "@MIDNIGHT", "@annually", "@Hourly"])
def test_every_alias_croniter_reads_is_accepted_in_any_case(alias: str) -> None:
    assert check_cron(alias) == alias


async def test_schedule_job_refuses_a_misspelt_alias_with_the_suggestion(
    redis_url: str, prefix: str
) -> None:
    q = JobQueue("cron", redis=redis_url, prefix=prefix)
    try:
        with pytest.raises(ConfigurationError, match=r"did you mean '@daily'\?"):
            await q.schedule_job("report", {}, "@dialy", schedule_id="nightly")
        assert await q.get_schedules() == []
    finally:
        await q.close()


# ---------------------------------------------------------------------- 3. misplaced keys
def test_a_jobqueue_keyword_given_in_settings_says_where_it_belongs(redis_url: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        JobQueue("s", redis=redis_url, settings={"max_payload_bytes": 2000})
    text = str(err.value)
    assert "unknown settings option: 'max_payload_bytes'" in text, text
    assert "'max_payload_bytes' is a keyword of JobQueue itself" in text, text
    assert "JobQueue(name, ..., max_payload_bytes=...)" in text, text
    assert "2000" not in text  # where it goes, not the value


def test_an_option_of_another_section_says_which(redis_url: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        JobQueue("s", redis=redis_url, worker={"lock_duration": 1000})
    assert "JobQueue(name, ..., settings={'lock_duration': ...})" in str(err.value)
    with pytest.raises(ConfigurationError) as err:
        JobQueue("s", redis=redis_url, settings={"concurrency": 5})
    assert "'concurrency' is an option of worker" in str(err.value)
    with pytest.raises(ConfigurationError) as err:
        QueueSettings(max_payload_bytes=1)  # type: ignore[call-arg]
    assert "keyword of JobQueue itself" in str(err.value)
    with pytest.raises(ConfigurationError) as err:
        QueueConfig("s", lock_duration=1)  # type: ignore[call-arg]
    assert "QueueConfig(name, ..., settings={'lock_duration': ...})" in str(err.value)


def test_a_key_that_belongs_nowhere_gets_no_such_hint(redis_url: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        JobQueue("s", redis=redis_url, dlq={"redis": "redis://u:secret@h", "bogus": 1})
    text = str(err.value)
    assert "'redis' is a keyword of JobQueue itself" in text, text
    assert "'bogus' is" not in text and "secret" not in text, text


# ---------------------------------------------------------------------- 4. job data
@pytest.mark.parametrize(
    ("key", "back"),
    [
        (True, "(True as 'true')"),
        (None, "(None as 'null')"),
        (1, "(1 as '1')"),
        (2.5, "(2.5 as '2.5')"),
    ],
)
async def test_a_dict_key_that_is_not_a_str_is_shown_as_json_gives_it_back(
    redis_url: str, prefix: str, key: Any, back: str
) -> None:
    q = JobQueue("keys", redis=redis_url, prefix=prefix)
    try:
        with pytest.raises(SerializationError) as err:
            await q.add_job("x", {"a": {key: 1}})
    finally:
        await q.close()
    text = str(err.value)
    assert back in text and "job data['a']" in text, text
    if key is not True and key != 1:
        assert "(1 as '1')" not in text, text


def test_a_key_json_cannot_carry_at_all_gets_no_example() -> None:
    with pytest.raises(SerializationError) as err:
        encode_progress("1", {(1, 2): 3})
    assert "cannot be carried as it is" in str(err.value) and " as '" not in str(err.value)


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"n": 2**70}, "job data['n'] is an int outside the 64-bit range"),
        ([1, {"b": [0, -(2**63) - 1]}], "job data[1]['b'][1] is an int outside"),
        (2**64, "job data is an int outside"),
    ],
)
async def test_an_int_out_of_range_says_where_it_is(
    redis_url: str, prefix: str, data: Any, where: str
) -> None:
    q = JobQueue("ints", redis=redis_url, prefix=prefix)
    try:
        with pytest.raises(SerializationError) as err:
            await q.add_job("x", data)
        assert (await q.get_stats()).waiting == 0  # nothing written
    finally:
        await q.close()
    assert where in str(err.value) and "pass big numbers as strings" in str(err.value)


def test_a_progress_int_out_of_range_says_so() -> None:
    with pytest.raises(SerializationError, match=r"progress\['n'\] is an int outside"):
        encode_progress("1", {"n": 10**30})


# ---------------------------------------------------------------------- 5. big result
class _Finals(Subscriber):
    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []

    def finished(self, queue: str, job: Any, outcome: Outcome) -> None:
        self.outcomes.append(outcome)


async def test_a_result_above_max_payload_bytes_fails_as_payload_too_large(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="kitium_queue")
    q = JobQueue(
        "big", redis=redis_url, prefix=prefix, max_payload_bytes=2000, worker={"scheduler": False}
    )
    finals = _Finals()
    q.subscribe(finals)
    q.process("p", lambda job: "y" * 10_000)
    try:
        jid = await q.add_job("p", None)
        await q.start()
        await wait_until(lambda: bool(finals.outcomes))
        info = await q.get_job_status(jid)
    finally:
        await q.close()
    (outcome,) = finals.outcomes
    assert outcome.kind == "failed"
    assert type(outcome.error).__name__ == "PayloadTooLargeError"
    reason = info.failed_reason or ""
    assert reason.startswith("PayloadTooLargeError: result of job"), reason
    assert "10002 bytes encoded, above max_payload_bytes=2000" in reason, reason
    assert _said(caplog, "failed for good") and not _said(caplog, "RuntimeError")


# ---------------------------------------------------------------------- 6. APP at import
@pytest.mark.parametrize("command", [["stats"], ["worker"]])
def test_an_app_that_uses_its_queue_at_import_is_told_where_that_code_goes(
    tmp_path: Path, redis_url: str, prefix: str, command: list[str]
) -> None:
    source = (
        "import asyncio\n"
        "from kitium_queue import JobQueue\n"
        f"queue = JobQueue('imp', redis={redis_url!r}, prefix={prefix!r})\n"
        "asyncio.run(queue.add_job('x', {}))\n"
    )
    ours = logging.getLogger("kitium_queue")
    level = ours.level  # the worker command sets it, as a worker process's start does
    try:
        with app_module(tmp_path, source) as module:  # imported afresh for each command
            result = CliRunner().invoke(main, [*command, f"{module}:queue"])
    finally:
        ours.setLevel(level)
    out = result.output
    assert result.exit_code == 2, out
    assert f"importing {module!r} used its queue" in out, out
    assert 'under `if __name__ == "__main__":`' in out, out
    assert "unexpected error" not in out, out


async def test_asyncio_run_at_import_inside_a_running_loop_gets_the_hint(
    tmp_path: Path, redis_url: str, prefix: str
) -> None:
    """An APP imported where an event loop runs: asyncio.run raises at import."""
    source = (
        "import asyncio\n"
        "from kitium_queue import JobQueue\n"
        f"queue = JobQueue('imp2', redis={redis_url!r}, prefix={prefix!r})\n"
        "coro = asyncio.sleep(0)\n"
        "try:\n"
        "    asyncio.run(coro)\n"
        "finally:\n"
        "    coro.close()\n"
    )
    with app_module(tmp_path, source) as module:
        result = CliRunner().invoke(main, ["stats", f"{module}:queue"])
    assert "cannot be called from a running event loop" in result.output, result.output
    assert 'under `if __name__ == "__main__":`' in result.output, result.output


def test_another_error_at_import_gets_no_such_hint(tmp_path: Path) -> None:
    source = "raise RuntimeError('config missing: DATABASE_URL')\n"
    with app_module(tmp_path, source) as module:
        result = CliRunner().invoke(main, ["stats", f"{module}:queue"])
    assert "config missing" in result.output and "__main__" not in result.output


# ---------------------------------------------------------------------- 7. schedules
async def test_a_redeclaration_that_changes_a_schedule_says_which_fields(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kitium_queue")
    q = JobQueue("sched", redis=redis_url, prefix=prefix)
    try:
        await q.schedule_job("report", {"customer": "acme"}, "0 2 * * *", tz="Europe/Berlin")
        await q.schedule_job("report", {"customer": "globex"}, "0 2 * * *", tz="America/New_York")
        assert len(await q.get_schedules()) == 1  # the same derived id: replaced
        (line,) = [r.getMessage() for r in _said(caplog, "updated (next tick")]
        assert "report@0 2 * * *" in line and ": data, tz changed" in line, line
        assert "give each its own schedule_id=" in line, line
        assert "acme" not in line and "globex" not in line, line  # no data in the log

        caplog.clear()
        for customer in ("acme", "globex"):  # what the docs say to do
            await q.schedule_job(
                "report", {"customer": customer}, "0 2 * * *", schedule_id=f"r:{customer}"
            )
        await q.schedule_job("report", {"customer": "acme"}, "0 2 * * *", schedule_id="r:acme")
        await q.schedule_job("report", {"customer": "x"}, "0 2 * * *", schedule_id="r:acme")
        ids = sorted(s.id for s in await q.get_schedules())
        assert ids == ["r:acme", "r:globex", "report@0 2 * * *"]
        (line,) = [r.getMessage() for r in _said(caplog, "updated (next tick")]
        assert line.endswith(": data changed"), line  # an own id: no collision hint
        assert _said(caplog, "r:acme unchanged")
    finally:
        for s in await q.get_schedules():
            await q.remove_schedule(s.id)
        await q.close()
