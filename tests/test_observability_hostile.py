"""Observability under hostile input, through a real Redis (and the OpenTelemetry SDK's
in-memory exporter for spans).

Log lines: a job id may hold characters that end a line for ``str.splitlines`` and many
log viewers (U+2028, U+2029, U+0085), reorder what a terminal shows (U+202E) or start
a terminal control sequence (U+009B). Such ids are accepted (existing data keeps them),
so every log line quoting an id escapes it: retries, final failures, failed event
handlers, stalls, dead-letters on recovery, abandoned runs.

Spans: a run that raises sets the process span's status to ERROR and adds one bounded
``exception`` event, whatever the exception is: one whose ``__str__`` raises (even a
``BaseException``) or returns a non-string, a ``BaseException`` that is not an
``Exception``, a message of megabytes; and a tracer that raises while recording it
(even a ``BaseException``) changes neither the job's outcome nor its reason.
"""

from __future__ import annotations

import asyncio
import logging
import unicodedata
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import INVALID_SPAN_CONTEXT, SpanKind, StatusCode

from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import JobQueue, JobStatus
from kitium_queue.features.tracing import OpenTelemetryTracing
from kitium_queue.limits import MAX_ERROR_CHARS, MAX_TRACEBACK_CHARS, printable


@pytest.fixture
async def make_queue(redis_url: str, prefix: str) -> AsyncIterator[QueueFactory]:
    factory = QueueFactory(redis_url, prefix)
    yield factory
    await factory.aclose()


# ------------------------------------------------------------------ log lines

FORGED = "2026-01-01 00:00:00,000 INFO kitium_queue.admin: queue orders: admin granted"
HOSTILE_IDS = [
    "a\u2028" + FORGED,
    "b\x85" + FORGED,
    "c\u2029" + FORGED,
    "d\u202e)dlo\u202c",
    "e\x9b2J",
]
#: Unicode categories that must never reach a log line raw (``printable`` escapes them).
_RAW = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def _our_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("kitium_queue")]


def _assert_one_line_each(messages: list[str]) -> None:
    for message in messages:
        raw = [c for c in message if unicodedata.category(c) in _RAW]
        assert not raw, f"raw {[f'U+{ord(c):04X}' for c in raw]} in log line {message!r}"
        assert len(message.splitlines()) == 1, message


def _quoted(messages: list[str], text: str, job_id: str) -> bool:
    return any(text in m and printable(job_id) in m for m in messages)


async def test_hostile_ids_are_escaped_in_failure_and_handler_log_lines(
    make_queue: QueueFactory, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="kitium_queue")
    monkeypatch.setattr("kitium_queue.events.FAILURE_LOG_S", 0.0)  # each failure logged
    q = make_queue(
        "forge", default_job_options={"attempts": 2, "backoff": {"type": "fixed", "delay": 10}}
    )

    @q.process("n")
    async def fail(job: Any) -> None:
        raise RuntimeError("bad\nnews")

    def broken_handler(event: Any) -> None:
        raise ValueError("handler broke")

    q.on("job-failed", broken_handler)
    for jid in HOSTILE_IDS:
        assert await q.add_job("n", {}, job_id=jid) == jid  # accepted, as before
    await q.start()
    for jid in HOSTILE_IDS:
        await wait_for_status(q, jid, JobStatus.FAILED, JobStatus.DLQ, timeout=10)
    messages = _our_messages(caplog)
    for jid in HOSTILE_IDS:
        assert _quoted(messages, "retrying in", jid), jid
        assert _quoted(messages, "failed for good", jid), jid
        assert _quoted(messages, "event handler", jid), jid
    _assert_one_line_each(messages)


async def _claim_and_die(q: JobQueue) -> None:
    """A worker that claims the next job under a 100 ms lease and dies."""
    reply = await q.run("claim", [1, 100, 0, 0, 2, "1", "dead-worker", 100])
    assert reply[0] == b"ok"


async def test_hostile_ids_are_escaped_when_stalled_or_dead_lettered_on_recovery(
    make_queue: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kitium_queue")
    stalls = make_queue("stalls", settings={"lock_duration": 2000})
    dead = make_queue("dead", settings={"max_stalled_count": 0})
    stalls.process("n", lambda job: "ok")
    dead.process("n", lambda job: "ok")
    stalled_id, dead_id = HOSTILE_IDS[0], HOSTILE_IDS[1]
    await stalls.add_job("n", {}, job_id=stalled_id)
    await dead.add_job("n", {}, job_id=dead_id)
    await _claim_and_die(stalls)
    await _claim_and_die(dead)
    await stalls.start()
    await dead.start()
    await wait_for_status(stalls, stalled_id, JobStatus.COMPLETED, timeout=10)
    await wait_for_status(dead, dead_id, JobStatus.DLQ, timeout=10)
    await wait_until(lambda: _quoted(_our_messages(caplog), "dead-lettered on recovery", dead_id))
    messages = _our_messages(caplog)
    assert _quoted(messages, "stalled (lease expired)", stalled_id)
    _assert_one_line_each(messages)


async def test_hostile_ids_are_escaped_when_a_run_is_abandoned(
    make_queue: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    q = make_queue(settings={"lock_duration": 400, "lock_renew_time": 50})
    client = await q.client()
    started: list[str] = []
    gate = asyncio.Event()

    @q.process("n")
    async def n(job: Any) -> str:
        started.append(job.id)
        await gate.wait()
        return "ok"

    caplog.set_level(logging.WARNING, logger="kitium_queue")
    gone, taken = HOSTILE_IDS[2], HOSTILE_IDS[3]
    await q.add_job("n", 1, job_id=gone)
    await q.add_job("n", 2, job_id=taken)
    await q.start(concurrency=2)
    await wait_until(lambda: len(started) == 2)
    await client.delete(q.keys.job(gone))
    await client.hset(q.keys.job(taken), "lt", "another-worker-token")
    await wait_until(
        lambda: (
            _quoted(_our_messages(caplog), "removed while it ran", gone)
            and _quoted(_our_messages(caplog), "lease of job", taken)
        )
    )
    gate.set()
    _assert_one_line_each(_our_messages(caplog))


# ------------------------------------------------------------------ spans


class StrRaises(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str failed")


class StrNotText(Exception):
    def __str__(self) -> str:
        return 42  # type: ignore[return-value]


class StrRaisesBase(Exception):
    def __str__(self) -> str:
        raise GeneratorExit()


class Abort(BaseException):
    """A custom abort signal: a ``BaseException`` that is not an ``Exception``."""


def recording() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def process_span(exporter: InMemorySpanExporter, job_id: str) -> ReadableSpan | None:
    for span in exporter.get_finished_spans():
        attrs = span.attributes or {}
        if span.kind == SpanKind.CONSUMER and attrs.get("messaging.message.id") == job_id:
            return span
    return None


async def _fail_once(
    make_queue: QueueFactory, name: str, error: Callable[[], BaseException], traced: bool
) -> tuple[Any, InMemorySpanExporter]:
    provider, exporter = recording()
    q = make_queue(name, default_job_options={"attempts": 1})
    if traced:
        OpenTelemetryTracing(q, tracer_provider=provider)

    @q.process("n")
    async def fail(job: Any) -> None:
        raise error()

    jid = await q.add_job("n", {})
    await q.start()
    info = await wait_for_status(q, jid, JobStatus.FAILED, JobStatus.DLQ, timeout=10)
    return info, exporter


@pytest.mark.parametrize(
    ("error", "type_name", "message"),
    [
        (StrRaises, "StrRaises", "<unprintable StrRaises>"),
        (StrNotText, "StrNotText", "<unprintable StrNotText>"),
        (StrRaisesBase, "StrRaisesBase", "<unprintable StrRaisesBase>"),
        (lambda: Abort("stop"), "Abort", "stop"),
        (lambda: ValueError("plain"), "ValueError", "plain"),
    ],
    ids=["str-raises", "str-not-text", "str-raises-base", "base-exception", "plain"],
)
async def test_a_run_that_raises_anything_gives_an_error_span_and_the_same_reason(
    make_queue: QueueFactory,
    caplog: pytest.LogCaptureFixture,
    error: Callable[[], BaseException],
    type_name: str,
    message: str,
) -> None:
    caplog.set_level(logging.WARNING, logger="kitium_queue")
    untraced, _ = await _fail_once(make_queue, "plain", error, traced=False)
    info, exporter = await _fail_once(make_queue, "traced", error, traced=True)
    assert info.failed_reason == untraced.failed_reason == f"{type_name}: {message}"

    span = await wait_until(lambda: process_span(exporter, info.id))
    assert span.status.status_code == StatusCode.ERROR
    assert span.status.description == type_name
    [event] = [e for e in span.events if e.name == "exception"]
    attrs = dict(event.attributes or {})
    expected_type = type_name if type_name == "ValueError" else f"{__name__}.{type_name}"
    assert attrs["exception.type"] == expected_type
    assert attrs["exception.message"] == message
    assert attrs["exception.escaped"] is True
    assert f"{type_name}" in str(attrs["exception.stacktrace"])
    assert not [m for m in _our_messages(caplog) if "tracer raised" in m]


async def test_exception_events_are_bounded_and_encodable(make_queue: QueueFactory) -> None:
    huge = "H" * 5_000_000 + "\udcff"
    info, exporter = await _fail_once(make_queue, "huge", lambda: ValueError(huge), traced=True)
    assert info.failed_reason is not None and len(info.failed_reason) <= MAX_ERROR_CHARS
    span = await wait_until(lambda: process_span(exporter, info.id))
    assert span.status.status_code == StatusCode.ERROR
    [event] = [e for e in span.events if e.name == "exception"]
    attrs = dict(event.attributes or {})
    text = str(attrs["exception.message"])
    trace_text = str(attrs["exception.stacktrace"])
    assert text.startswith("HHHH") and "truncated" in text
    assert len(text) <= MAX_ERROR_CHARS
    assert len(trace_text) <= MAX_TRACEBACK_CHARS and "ValueError" in trace_text
    for value in attrs.values():
        if isinstance(value, str):
            value.encode("utf-8")  # what an exporter must do: never fails


async def test_a_timed_out_run_gives_an_error_span(make_queue: QueueFactory) -> None:
    provider, exporter = recording()
    q = make_queue("slow")
    OpenTelemetryTracing(q, tracer_provider=provider)

    @q.process("n")
    async def slow(job: Any) -> None:
        await asyncio.sleep(30)

    jid = await q.add_job("n", {}, attempts=1, timeout=100)
    await q.start()
    info = await wait_for_status(q, jid, JobStatus.FAILED, JobStatus.DLQ, timeout=10)
    assert "exceeded its timeout" in (info.failed_reason or "")
    span = await wait_until(lambda: process_span(exporter, jid))
    assert span.status.status_code == StatusCode.ERROR
    assert [e for e in span.events if e.name == "exception"]


class _BrokenSpan:
    """A recording span whose exception recording raises a ``BaseException``."""

    def get_span_context(self) -> Any:
        return INVALID_SPAN_CONTEXT

    def is_recording(self) -> bool:
        return True

    def set_status(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def record_exception(self, *args: Any, **kwargs: Any) -> None:
        raise GeneratorExit()

    def add_event(self, *args: Any, **kwargs: Any) -> None:
        raise GeneratorExit()

    def end(self) -> None:
        pass


class _BrokenProvider:
    def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
        return self

    def start_span(self, *args: Any, **kwargs: Any) -> Any:
        return _BrokenSpan()


async def test_a_tracer_raising_while_recording_changes_no_outcome(
    make_queue: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="kitium_queue")
    q = make_queue("broken", default_job_options={"attempts": 1})
    OpenTelemetryTracing(q, tracer_provider=_BrokenProvider())

    @q.process("n")
    async def fail(job: Any) -> None:
        raise ValueError("the real error")

    jid = await q.add_job("n", {})
    await q.start()
    info = await wait_for_status(q, jid, JobStatus.FAILED, JobStatus.DLQ, timeout=10)
    assert info.failed_reason == "ValueError: the real error"
    messages = _our_messages(caplog)
    assert any("tracer raised GeneratorExit" in m for m in messages), messages


async def test_a_run_handed_back_by_a_stop_gives_no_error_span(make_queue: QueueFactory) -> None:
    provider, exporter = recording()
    q = make_queue("handback")
    OpenTelemetryTracing(q, tracer_provider=provider)
    started = asyncio.Event()

    @q.process("n")
    async def slow(job: Any) -> None:
        started.set()
        await asyncio.sleep(30)

    jid = await q.add_job("n", {})
    await q.start()
    await asyncio.wait_for(started.wait(), 10)
    await q.worker.stop(timeout_ms=100)
    info = await wait_for_status(q, jid, JobStatus.WAITING, timeout=10)
    assert info.attempts <= 1
    span = await wait_until(lambda: process_span(exporter, jid))
    assert span.status.status_code != StatusCode.ERROR, span.status
