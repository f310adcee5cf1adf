"""Messages that misled (stop 61), each checked against a real Redis where a queue is
involved:

1. a job gone when its held outcome reaches a Redis that restarted without persistence
   was blamed on ``clear(force=True)`` or an erasure only. Now the worker reads the
   queue's id counter once for such a round: gone (or below a gone job's id), the
   warning says Redis lost its data; there, the jobs went another way (run again by
   another worker after their leases expired and removed by retention, an outcome
   recorded before its reply was lost, a clear): said at INFO, no data loss claimed.
   A refusal is no outage: it marks no held outcome. The per-job line and the lease
   renewal's name every cause;
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
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from click.testing import CliRunner
from redis.exceptions import ConnectionError as RedisConnectionError

from _redis import RedisServer
from helpers import app_module, wait_until
from kitium_queue import JobQueue, QueueConfig
from kitium_queue.cli import main
from kitium_queue.codec import encode_progress
from kitium_queue.connerrors import permission_denied
from kitium_queue.errors import ConfigurationError, SerializationError
from kitium_queue.features.schedules import check_cron
from kitium_queue.hooks import Outcome, Subscriber
from kitium_queue.options import QueueSettings

DATA_LOST = "Redis lost its data"


def _held(q: JobQueue) -> tuple[asyncio.Event, list[str]]:
    """A processor of job name ``x`` on ``q`` that records each job it starts and holds
    it until the gate returned is set."""
    gate, started = asyncio.Event(), []

    @q.process("x")
    async def x(job: Any) -> None:
        started.append(job.id)
        await gate.wait()

    return gate, started


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
    assert f"{DATA_LOST}: a restart without persistence" in text, text
    assert "the queue's id counter is gone" in text, text  # checked, not guessed
    assert "persistence (appendonly, save)" in text and "replica" in text, text
    assert "cleared with force=True" not in text and "kept its data" not in text, text
    assert not _said(caplog, "was removed while it ran"), caplog.text


class CutProxy:
    """A loopback TCP proxy to a Redis server, in the test's event loop, for one worker:
    ``cut()`` drops every connection through it and refuses new ones until ``mend()``
    (a network cut of that worker alone); with ``swallow`` set, what the server answers
    is read and dropped (commands still reach it: replies lost on the way back)."""

    def __init__(self, port: int) -> None:
        self.port, self.down, self.swallow = port, False, False
        self.server: asyncio.Server | None = None
        self.links: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> CutProxy:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        assert self.server is not None
        self.server.close()

    def cut(self) -> None:
        self.down = True
        for w in list(self.links):
            w.transport.abort()

    def mend(self) -> None:
        self.down = False

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            writer.transport.abort()
            return
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.port)
        self.links |= {writer, up_w}

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, back: bool) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await r.read(65536):
                    if not (back and self.swallow):
                        w.write(data)
                        await w.drain()
            w.transport.abort()

        await asyncio.gather(pipe(reader, up_w, False), pipe(up_r, writer, True))
        self.links -= {writer, up_w}


def _gone_line(caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    (record,) = _said(caplog, "were gone when it answered again")
    return record


async def test_a_job_run_again_elsewhere_after_its_lease_expired_is_no_data_loss(
    lone_server: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Worker A is cut off longer than lock_duration with the outcome of its job held;
    worker B recovers the job, runs it, and retention removes it (remove_on_complete).
    When A's outcome lands, the job is gone, but Redis kept its data: said so, at INFO,
    with the causes that fit, not as lost data."""
    caplog.set_level(logging.INFO, logger="kitium_queue")
    fast = {"lock_duration": 1000, "lock_renew_time": 200}
    async with CutProxy(lone_server.port) as proxy:
        a = JobQueue("rerun", redis=proxy.url, prefix=prefix, settings=fast,
                     worker={"scheduler": False})  # fmt: skip
        b = JobQueue("rerun", redis=lone_server.url, prefix=prefix, settings=fast,
                     worker={"scheduler": False})  # fmt: skip
        gate, on_a, on_b = asyncio.Event(), [], []

        @a.process("x")
        async def xa(job: Any) -> str:
            on_a.append(job.id)
            await gate.wait()
            return "a"

        @b.process("x")
        async def xb(job: Any) -> str:
            on_b.append(job.id)
            return "b"

        try:
            jid = await b.add_job("x", {}, remove_on_complete=True)
            await a.start(concurrency=1)
            await wait_until(lambda: on_a == [jid])
            proxy.cut()
            gate.set()  # A's outcome is held: Redis is unreachable for A
            await wait_until(lambda: len(a.worker.outcomes._held_out) == 1, timeout=20)
            await b.start(concurrency=1)  # recovers the job once A's lease expired
            await wait_until(lambda: on_b == [jid], timeout=20)
            await wait_until(lambda: _no_key(lone_server, a.keys.job(jid)), timeout=20)
            proxy.mend()
            await wait_until(lambda: bool(_said(caplog, "were gone")), timeout=20)
        finally:
            proxy.mend()
            await a.close()
            await b.close()
    record = _gone_line(caplog)
    text = record.getMessage()
    assert record.levelno == logging.INFO, text
    assert "1 job(s) whose outcomes this worker held" in text and f"{jid} (C)" in text, text
    assert "Redis kept its data (the queue's id counter is at 1)" in text, text
    assert "ran them again after their leases expired (lock_duration=1000 ms)" in text, text
    assert "Redis lost its data" not in text and "appendonly" not in text, text
    assert not [r for r in caplog.records if DATA_LOST in r.getMessage()
                and r.levelno >= logging.WARNING], caplog.text  # fmt: skip


async def test_an_outcome_whose_reply_was_lost_after_it_recorded_is_no_data_loss(
    lone_server: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The finish reaches Redis, which records it and removes the job at once
    (remove_on_complete); the reply is lost with the connection. The outcome is sent
    again and finds the job gone: Redis kept its data, said at INFO."""
    caplog.set_level(logging.INFO, logger="kitium_queue")
    async with CutProxy(lone_server.port) as proxy:
        q = JobQueue("lostreply", redis=proxy.url, prefix=prefix, worker={"scheduler": False})
        gate, started = asyncio.Event(), []

        @q.process("x")
        async def x(job: Any) -> str:
            started.append(job.id)
            await gate.wait()
            return "done"

        try:
            jid = await q.add_job("x", {}, remove_on_complete=True)
            await q.start(concurrency=1)
            await wait_until(lambda: started == [jid])
            proxy.swallow = True  # what Redis answers from now on is lost
            gate.set()
            await wait_until(lambda: _no_key(lone_server, q.keys.job(jid)), timeout=20)
            proxy.cut()  # the connection waiting for that reply breaks
            await wait_until(lambda: len(q.worker.outcomes._held_out) == 1, timeout=20)
            proxy.swallow = False
            proxy.mend()
            await wait_until(lambda: bool(_said(caplog, "were gone")), timeout=20)
        finally:
            proxy.swallow = False
            proxy.mend()
            await q.close()
    text = _gone_line(caplog).getMessage()
    assert _gone_line(caplog).levelno == logging.INFO, text
    assert f"{jid} (C)" in text and "Redis kept its data (the queue's id counter is at 1)" in text
    assert "recorded before a reply was lost" in text, text
    assert "Redis lost its data" not in text, text


async def test_a_flush_during_an_outage_then_new_jobs_still_reads_as_lost_data(
    lone_server: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """FLUSHDB while a worker is cut off, then a job added (the id counter starts again
    at 1): the counter is below the gone jobs' ids, so Redis lost its data (WARNING)."""
    caplog.set_level(logging.INFO, logger="kitium_queue")
    async with CutProxy(lone_server.port) as proxy:
        q = JobQueue("flushed", redis=proxy.url, prefix=prefix, worker={"scheduler": False})
        other = JobQueue("flushed", redis=lone_server.url, prefix=prefix)
        gate, started = _held(q)

        try:
            ids = [await other.add_job("x", {}) for _ in range(3)]
            await q.start(concurrency=3)
            await wait_until(lambda: len(started) == 3)
            proxy.cut()
            gate.set()
            await wait_until(lambda: len(q.worker.outcomes._held_out) == 3, timeout=20)
            await (await other.client()).flushdb()
            await other.add_job("x", {}, job_id="after")  # the counter: 1 again
            proxy.mend()
            await wait_until(lambda: bool(_said(caplog, "were gone")), timeout=20)
        finally:
            proxy.mend()
            await q.close()
            await other.close()
    record = _gone_line(caplog)
    text = record.getMessage()
    assert record.levelno == logging.WARNING, text
    assert all(f"{jid} (C)" in text for jid in ids), text
    assert f"{DATA_LOST}: a restart" in text, text
    assert "the queue's id counter is at 1, below job id 3" in text, text
    assert "kept its data" not in text, text


async def test_a_refusal_marks_no_held_outcome_unreachability_does(
    redis_url: str, prefix: str
) -> None:
    """``report_outage`` with a refusal for lack of permission (Redis answered) leaves the
    held outcomes unmarked; a lost connection marks them."""
    q = JobQueue("marks", redis=redis_url, prefix=prefix, worker={"scheduler": False})
    gate, started = _held(q)

    try:
        jid = await q.add_job("x", 1)
        await q.start(concurrency=1)
        await wait_until(lambda: started == [jid])
        outcomes, run = q.worker.outcomes, q.worker.leases.runs[jid]
        held = (run, "C", None, None, 0)
        outcomes.done.append(held)  # as an outcome held after a failed round
        try:
            refusal = permission_denied("NOPERM this user has no permissions to run 'evalsha'")
            q.worker.report_outage(refusal)
            assert not outcomes._held_out
            q.worker.report_outage(RedisConnectionError("Connection refused"))
            assert outcomes._held_out == {run}
        finally:
            outcomes.done.remove(held)
            outcomes._held_out.clear()
    finally:
        gate.set()
        await q.close()


async def _no_key(server: RedisServer, key: str) -> bool:
    """Whether ``key`` is gone, asked of ``server`` directly (not through the proxy)."""
    client = redis.asyncio.Redis.from_url(server.url)
    try:
        return not await client.exists(key)
    finally:
        await client.aclose()


async def test_a_job_cleared_while_it_ran_names_every_cause_at_info(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """No outage: the per-job INFO line names the clear, the erasure and the lost data."""
    caplog.set_level(logging.INFO, logger="kitium_queue")
    q = JobQueue("cleared", redis=redis_url, prefix=prefix, worker={"scheduler": False})
    gate, started = _held(q)

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
    assert "after its lease expired and removed by retention" in record.getMessage()
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
    gate, started = _held(q)

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
    assert "after this lease expired and removed by retention" in record.getMessage()


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
