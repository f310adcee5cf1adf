"""Every log record the library writes is bounded (issue 11, item 4): a processor, an
event handler or a lifecycle subscriber raising an exception with a 5 MB message never
makes a 5 MB log line. One helper (``limits.get_logger``) gives every module its logger."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import pytest

from kitium_queue import JobQueue
from kitium_queue.hooks import Outcome, Subscriber
from kitium_queue.limits import (
    MAX_LOG_MESSAGE_CHARS,
    MAX_TRACEBACK_CHARS,
    bound_log_record,
    get_logger,
)

HUGE = 5_000_000
# A formatted record: its message, a newline, its traceback.
RECORD_BOUND = MAX_LOG_MESSAGE_CHARS + 1 + MAX_TRACEBACK_CHARS + 200
SRC = Path(__file__).resolve().parents[1] / "src" / "kitium_queue"


class Loud(Subscriber):
    def finished(self, queue: str, job: object, outcome: Outcome) -> None:
        raise RuntimeError("S" * HUGE)


async def test_huge_exception_texts_make_bounded_log_records(
    caplog: pytest.LogCaptureFixture,
) -> None:
    q = JobQueue("logs", default_job_options={"attempts": 2, "backoff": 0})
    dead = asyncio.Event()
    q.on("job-dlq", lambda e: dead.set())

    def handler(e: object) -> None:
        raise RuntimeError("H" * HUGE)

    q.on("job-failed", handler)
    q.subscribe(Loud())

    @q.process("boom")
    async def boom(job: object) -> None:
        raise ValueError("M" * HUGE)

    caplog.set_level(logging.DEBUG)
    try:
        await q.add_job("boom", {})
        await q.start()
        await asyncio.wait_for(dead.wait(), 10)
    finally:
        await q.close()
    ours = [r for r in caplog.records if r.name.startswith("kitium_queue")]
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    texts = [formatter.format(r) for r in ours]
    # The processor's error was logged (retry, then for good), and the raising handler
    # and subscriber with their tracebacks: all there, each bounded.
    assert any("failed (attempt 1/2)" in t for t in texts)
    assert any("failed for good" in t for t in texts)
    assert any("Traceback" in t and "HHHH" in t for t in texts)
    assert any("Traceback" in t and "SSSS" in t for t in texts)
    for text in texts:
        assert len(text) <= RECORD_BOUND, (len(text), text[:200])
    assert max(len(line) for t in texts for line in t.splitlines()) <= MAX_LOG_MESSAGE_CHARS
    assert "truncated" in caplog.text


def test_bound_log_record() -> None:
    log = get_logger("kitium_queue.test_bounds")
    record = log.makeRecord(log.name, logging.ERROR, "f", 1, "x=%s y=%d", ("a" * HUGE, 7), None)
    bound_log_record(record)
    assert len(record.getMessage()) <= MAX_LOG_MESSAGE_CHARS
    assert record.getMessage().startswith("x=aaa") and "truncated" in record.getMessage()
    # Arguments that do not fit the format never make the record fail.
    odd = log.makeRecord(log.name, logging.ERROR, "f", 1, "%d %d", ("not a number",), None)
    bound_log_record(odd)
    assert "could not be formatted" in odd.getMessage()
    # A deep chain of huge exceptions: the innermost frames and the marker are kept.
    try:
        try:
            raise KeyError("k" * HUGE)
        except KeyError as inner:
            raise RuntimeError("r" * HUGE) from inner
    except RuntimeError as exc:
        rec = log.makeRecord(log.name, logging.ERROR, "f", 1, "m", None, (type(exc), exc, None))
    bound_log_record(rec)
    assert rec.exc_text is not None and len(rec.exc_text) <= MAX_TRACEBACK_CHARS + 100
    assert "RuntimeError: rrr" in rec.exc_text
    assert get_logger("kitium_queue.test_bounds").filters.count(log.filters[0]) == 1


def test_every_module_logs_through_get_logger() -> None:
    """The one helper is used everywhere: no module makes its own logger, and every
    module that logs has its ``log`` from ``get_logger``."""
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        name = path.relative_to(SRC).as_posix()
        getters = re.findall(r"logging\.getLogger\([^)]*\)", text)
        if name in ("cli/queue.py", "cli/__init__.py", "demo.py"):  # they set levels, log nothing
            assert not re.search(r"\blog\.(debug|info|warning|error|exception)\(", text)
            continue
        if name == "limits.py":
            continue
        assert not getters, f"{name}: {getters}; use limits.get_logger"
        if re.search(r"\blog\.(debug|info|warning|error|exception|critical)\(", text):
            assert re.search(r"^log = get_logger\(", text, re.M), name
