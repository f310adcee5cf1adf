"""OpenTelemetry tracing and process mode: the run's trace goes on in the child.

A processor registered with ``mode="process"`` ran in a child process with no current
span: the spans it opened there began traces of their own. Now the worker's run context
(the process span's traceparent, and its tracestate) goes with the job
(``middleware.carry_to_child``, ``carried``) and is current around the processor:

* the span a processor opens in the child, exported there by the SDK's in-memory
  exporter, has the job's process span as its (remote) parent, in the job's trace;
* after a processor that raised, the child's next job runs in a clean context (the
  context was detached), and the failed run's own child span was parented too;
* a run sampled out upstream (no process span) carries the job's stored context: the
  child's spans are sampled out too and keep the job's trace id;
* a child that cannot import opentelemetry runs the job as before;
* what the child reads back from its pipe is checked: malformed entries, functions not
  marked ``entered_in_child``, invalid traceparents and tracestates are ignored.

Every end-to-end test runs against a real Redis and reads the job back from it.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, StatusCode, TraceFlags, TraceState

import test_review_stop57_sync_proc
from helpers import QueueFactory, app_module, wait_for_status, wait_until
from kitium_queue import JobQueue, JobStatus, carried
from kitium_queue.features.tracing import OPTION, OpenTelemetryTracing, enter_in_child
from kitium_queue.middleware import (
    MAX_CHILD_CONTEXT_CHARS,
    MAX_CHILD_CONTEXTS,
    child_contexts,
    entered_in_child,
)

pytestmark = pytest.mark.timeout(180)

#: A child starts a Python interpreter (seconds on a loaded machine).
WAIT_S = 90.0
ENDED = (JobStatus.FAILED, JobStatus.DLQ)

#: Processors run in the child, which imports them by module path. Each opens a span
#: with a tracer of the child's own SDK provider and returns (or writes) what the
#: child's in-memory exporter exported.
PROCESSORS = """
import json

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

EXPORTER = InMemorySpanExporter()
PROVIDER = TracerProvider()
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))
TRACER = PROVIDER.get_tracer("child")


def child_span(job):
    EXPORTER.clear()
    with TRACER.start_as_current_span("child work") as span:
        seen = span.get_span_context()
    out = {
        "exported": [],
        "trace_id": f"{seen.trace_id:032x}",
        "sampled": bool(seen.trace_flags.sampled),
    }
    for done in EXPORTER.get_finished_spans():
        parent = done.parent
        out["exported"].append(
            {
                "trace_id": f"{done.context.trace_id:032x}",
                "span_id": f"{done.context.span_id:016x}",
                "parent_id": None if parent is None else f"{parent.span_id:016x}",
                "remote": None if parent is None else parent.is_remote,
                "tracestate": None if parent is None else parent.trace_state.to_header(),
            }
        )
    if job.data.get("fail"):
        with open(job.data["fail"], "w") as f:
            json.dump(out, f)
        raise RuntimeError("the processor failed")
    return out


def current(job):
    ctx = trace.get_current_span().get_span_context()
    return {"valid": ctx.is_valid, "trace_id": f"{ctx.trace_id:032x}"}
"""


#: test_review_stop57_sync_proc's fixture: a QueueFactory on the test's Redis.
make = test_review_stop57_sync_proc.make


@pytest.fixture
def processors(tmp_path: Path) -> Iterator[Any]:
    with app_module(tmp_path, PROCESSORS, "kq_stop58_trace") as module:
        yield importlib.import_module(module)


def recording(sampler: Any = None) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _queue(make: QueueFactory) -> JobQueue:
    # One child, reused from job to job (no max_jobs_per_child).
    return make("trc", worker={"concurrency": 1, "shutdown_timeout": 2000})


async def _done(q: JobQueue, job_id: str) -> Any:
    info = await wait_for_status(q, job_id, JobStatus.COMPLETED, *ENDED, timeout=WAIT_S)
    assert info.status is JobStatus.COMPLETED, info.failed_reason
    return info


async def _process_span(exported: InMemorySpanExporter, job_id: str) -> ReadableSpan:
    def spans() -> list[ReadableSpan]:
        return [
            s
            for s in exported.get_finished_spans()
            if s.name == "trc process" and s.attributes["messaging.message.id"] == job_id
        ]

    await wait_until(lambda: len(spans()) == 1, 10)
    return spans()[0]


async def test_a_span_opened_in_the_child_is_a_child_of_the_jobs_process_span(
    make: QueueFactory, processors: Any
) -> None:
    provider, exported = recording()
    q = _queue(make)
    OpenTelemetryTracing(q, tracer_provider=provider)
    q.process("work", processors.child_span, mode="process")
    job_id = await q.add_job("work", {})
    await q.start()
    info = await _done(q, job_id)
    run = await _process_span(exported, job_id)
    [publish] = [s for s in exported.get_finished_spans() if s.name == "trc publish"]
    [child] = info.result["exported"]
    # The child's span: in the job's trace, its parent the worker's process span (not
    # the producer's publish span), a remote parent (it crossed a process boundary).
    assert child["trace_id"] == f"{run.context.trace_id:032x}"
    assert child["trace_id"] == f"{publish.context.trace_id:032x}"
    assert child["parent_id"] == f"{run.context.span_id:016x}"
    assert child["parent_id"] != f"{publish.context.span_id:016x}"
    assert child["remote"] is True
    assert child["span_id"] not in (f"{run.context.span_id:016x}", child["parent_id"])
    assert info.result["sampled"] is True


async def test_a_raising_processor_leaves_the_child_clean_for_its_next_job(
    make: QueueFactory, processors: Any, tmp_path: Path
) -> None:
    provider, exported = recording()
    q = _queue(make)
    OpenTelemetryTracing(q, tracer_provider=provider)

    async def bare(job: Any, call_next: Callable[[], Awaitable[Any]]) -> Any:
        # Inner to tracing: a run marked "bare" carries nothing to its child.
        if job.name != "bare":
            return await call_next()
        token = child_contexts.set(())
        try:
            return await call_next()
        finally:
            child_contexts.reset(token)

    q.use_process(bare)
    q.process("work", processors.child_span, mode="process")
    q.process("bare", processors.current, mode="process")
    written = tmp_path / "failed-run.json"
    failed = await q.add_job("work", {"fail": str(written)}, attempts=1)
    await q.start()
    info = await wait_for_status(q, failed, *ENDED, timeout=WAIT_S)
    assert "the processor failed" in (info.failed_reason or "")
    run = await _process_span(exported, failed)
    assert run.status.status_code is StatusCode.ERROR
    [child] = json.loads(written.read_text())["exported"]
    assert child["parent_id"] == f"{run.context.span_id:016x}"
    assert child["trace_id"] == f"{run.context.trace_id:032x}"
    # The same child runs the next job, which carries no context: nothing of the
    # failed run's is current there any more (it was detached when the processor raised).
    after = await q.add_job("bare", {})
    info = await _done(q, after)
    assert info.result == {"valid": False, "trace_id": "0" * 32}
    # And a traced job after it is parented by its own run again.
    again = await q.add_job("work", {})
    info = await _done(q, again)
    second = await _process_span(exported, again)
    assert [c["parent_id"] for c in info.result["exported"]] == [f"{second.context.span_id:016x}"]


async def test_a_run_sampled_out_carries_the_jobs_stored_context(
    make: QueueFactory, processors: Any
) -> None:
    provider, exported = recording(ParentBased(TraceIdRatioBased(0)))
    q = _queue(make)
    OpenTelemetryTracing(q, tracer_provider=provider)
    q.process("work", processors.child_span, mode="process")
    job_id = await q.add_job("work", {})
    stored = (await q.get_job_status(job_id)).options[OPTION]  # type: ignore[union-attr]
    assert not int(stored[53:], 16) & 1  # not sampled
    await q.start()
    info = await _done(q, job_id)
    # The child's sampler (parent-based) drops its span, as the worker's did, and what
    # it would propagate carries the job's trace id (before: a new trace, recorded).
    assert info.result["exported"] == []
    assert info.result["sampled"] is False
    assert info.result["trace_id"] == stored[3:35]
    assert not exported.get_finished_spans()


async def test_a_child_without_opentelemetry_runs_the_job(
    make: QueueFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    blocked = tmp_path / "blocked"
    (blocked / "opentelemetry").mkdir(parents=True)
    (blocked / "opentelemetry" / "__init__.py").write_text(
        'raise ImportError("opentelemetry is not installed here")\n'
    )
    monkeypatch.setenv("PYTHONPATH", str(blocked))  # first on the child's path
    provider, exported = recording()
    q = _queue(make)
    OpenTelemetryTracing(q, tracer_provider=provider)
    with app_module(tmp_path, "def plain(job):\n    return job.data * 2\n", "kq_plain") as name:
        q.process("plain", importlib.import_module(name).plain, mode="process")
        job_id = await q.add_job("plain", 21)
        await q.start()
        info = await _done(q, job_id)
    assert info.result == 42
    await _process_span(exported, job_id)  # traced in the worker as before
    # The child (its stderr is the worker's) skipped the context without a word.
    assert "carried to a child process" not in capfd.readouterr().err


# ================================================================ what the child reads


def _current() -> SpanContext:
    return trace.get_current_span().get_span_context()


def test_the_child_enters_a_valid_context_and_leaves_it() -> None:
    traceparent = f"00-{'ab' * 16}-{'cd' * 8}-01"
    leaving = carried.enter([["kitium_queue.features.tracing:enter_in_child", traceparent]])
    try:
        sc = _current()
        assert (sc.trace_id, sc.span_id, sc.is_remote) == (
            int("ab" * 16, 16),
            int("cd" * 8, 16),
            True,
        )
        assert sc.trace_flags.sampled
    finally:
        carried.leave(leaving)
    assert not leaving and not _current().is_valid
    # A tracestate rides along; an invalid one is dropped, the traceparent kept.
    for state, kept in (("vendor=a1,other=b2", "vendor=a1,other=b2"), ("Bad Key=1", "")):
        undo = enter_in_child(f"{traceparent} {state}")
        assert undo is not None
        try:
            assert _current().trace_state.to_header() == kept
        finally:
            undo()
    assert not _current().is_valid


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        f"00-{'0' * 32}-{'cd' * 8}-01",  # trace id zero
        f"00-{'ab' * 16}-{'0' * 16}-01",  # span id zero
        f"ff-{'ab' * 16}-{'cd' * 8}-01",  # version ff
        f"00-{'AB' * 16}-{'cd' * 8}-01",  # uppercase
        f"00-{'ab' * 16}-{'cd' * 8}-01x",
        f" 00-{'ab' * 16}-{'cd' * 8}-01",
    ],
)
def test_the_child_ignores_an_invalid_traceparent(text: str) -> None:
    assert enter_in_child(text) is None
    assert not _current().is_valid


def _marked(text: str) -> Callable[[], None]:
    raise AssertionError("never reached")


@entered_in_child
def _record(text: str) -> Callable[[], None]:
    SEEN.append(text)
    return lambda: SEEN.append(f"left {text}")


@entered_in_child
def _raises(text: str) -> None:
    raise ValueError("a feature's bug")


SEEN: list[str] = []
HERE = __name__


@pytest.mark.parametrize(
    "frame",
    [
        None,
        "00-x",
        {"a": 1},
        [None],
        [["only-one"]],
        [[f"{HERE}:_record", "x", "extra"]],
        [[f"{HERE}:_record", 12]],
        [[f"{HERE}:_record", "x" * (MAX_CHILD_CONTEXT_CHARS + 1)]],
        [[f"{HERE}:_record", "line\nbreak"]],
        [[f"{HERE}:_record", "caf\u00e9"]],
        [["not a path", "x"]],
        [["os:system", "true"]],  # a function not marked: never called
        [[f"{HERE}:_marked", "x"]],
        [["kq_no_such_module_anywhere:enter", "x"]],  # ImportError: skipped
        [[f"{HERE}:_raises", "x"]],
    ],
)
def test_the_child_ignores_what_it_cannot_trust(frame: Any) -> None:
    SEEN.clear()
    leaving = carried.enter(frame)
    assert leaving == [] and SEEN == []
    carried.leave(leaving)


def test_the_child_enters_at_most_the_bound_and_leaves_innermost_first() -> None:
    SEEN.clear()
    frame = [[f"{HERE}:_record", str(i)] for i in range(MAX_CHILD_CONTEXTS + 3)]
    leaving = carried.enter(frame)
    entered = [str(i) for i in range(MAX_CHILD_CONTEXTS)]
    assert entered == SEEN
    carried.leave(leaving)
    assert SEEN[MAX_CHILD_CONTEXTS:] == [f"left {i}" for i in reversed(range(MAX_CHILD_CONTEXTS))]


def test_the_worker_captures_the_current_span_and_bounds_the_tracestate() -> None:
    from kitium_queue.features.tracing import _CHILD

    assert carried.captured((_CHILD,)) == []  # no current span: nothing carried
    traceparent = f"00-{'ab' * 16}-{'cd' * 8}-01"
    for state, text in (
        (TraceState([("vendor", "a1")]), f"{traceparent} vendor=a1"),
        (TraceState([(f"k{i}", "v" * 200) for i in range(8)]), traceparent),  # too long
    ):
        sc = SpanContext(int("ab" * 16, 16), int("cd" * 8, 16), False, TraceFlags(1), state)
        token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(sc)))
        try:
            assert carried.captured((_CHILD,)) == [[_CHILD.enter, text]]
        finally:
            otel_context.detach(token)
