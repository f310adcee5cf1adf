"""OpenTelemetry tracing (issue 16, item 2), through a real Redis with the SDK's
in-memory exporter: the producer's publish span and the worker's process span share
the trace id; messaging attributes are set; a retry makes a second process span linked
to the enqueue context and to the first attempt; the brief's telemetry adapter still
works alongside; a bad traceparent is refused. Sampling: a run sampled out upstream
makes no span under a parent-based sampler yet has the job's context current, and is
traced as the sampler says under any other; a no-op tracer adds jobs untraced. The
stored traceparent is parsed as the W3C propagator parses it (fuzzed); job ids made
for tracing are version 4 UUIDs, never shared with a forked child."""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import ConfigurationError, JobStatus
from kitium_queue.features import tracing
from kitium_queue.features.tracing import OPTION, OpenTelemetryTracing


@pytest.fixture
async def make_queue(redis_url: str, prefix: str) -> AsyncIterator[QueueFactory]:
    factory = QueueFactory(redis_url, prefix)
    yield factory
    await factory.aclose()


def recording(sampler: Any = None) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@pytest.fixture
def spans() -> tuple[TracerProvider, InMemorySpanExporter]:
    return recording()


class Adapter:
    """The brief's telemetry adapter, recording span names."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def start_span(self, name: str, attributes: Any = None) -> Any:
        self.names.append(name)
        return self

    def set_attribute(self, key: str, value: Any) -> None: ...

    def record_exception(self, error: BaseException) -> None: ...

    def end(self) -> None: ...


async def test_producer_to_worker_trace_with_retry_links(
    make_queue: QueueFactory,
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exported = spans
    adapter = Adapter()
    q = make_queue("tr", telemetry=adapter)
    OpenTelemetryTracing(q, tracer_provider=provider)
    runs: list[int] = []

    @q.process("send")
    async def send(job: Any) -> str:
        runs.append(job.attempts)
        # The process span is current while the processor runs.
        assert trace.get_current_span().get_span_context().is_valid
        if job.attempts == 1:
            raise RuntimeError("first attempt fails")
        return "ok"

    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("request") as outer:
        job_id = await q.add_job(
            "send", {"to": "x"}, attempts=2, backoff={"type": "fixed", "delay": 10}
        )
    info = await q.get_job_status(job_id)
    assert info is not None and info.options[OPTION].startswith("00-")
    await q.start()

    async def done() -> bool:
        got = await q.get_job_status(job_id)
        return got is not None and got.status == JobStatus.COMPLETED

    await wait_until(done, 10)
    await wait_until(
        lambda: len([s for s in exported.get_finished_spans() if s.name == "tr process"]) == 2, 5
    )
    finished = exported.get_finished_spans()
    [publish] = [s for s in finished if s.name == "tr publish"]
    first, second = sorted(
        (s for s in finished if s.name == "tr process"),
        key=lambda s: s.attributes["kitium_queue.job.attempt"],
    )
    trace_id = outer.get_span_context().trace_id
    # One trace from the caller's span through the producer to both runs.
    assert publish.context.trace_id == first.context.trace_id == trace_id
    assert second.context.trace_id == trace_id
    assert publish.parent is not None and publish.parent.span_id == outer.get_span_context().span_id
    assert first.parent is not None and first.parent.span_id == publish.context.span_id
    assert publish.kind == SpanKind.PRODUCER and first.kind == SpanKind.CONSUMER
    assert dict(publish.attributes) == {
        "messaging.system": "kitium-queue",
        "messaging.destination.name": "tr",
        "messaging.operation": "publish",
        "messaging.operation.type": "send",
        "messaging.message.id": job_id,
        "kitium_queue.job.name": "send",
    }
    assert first.attributes["messaging.operation"] == "process"
    assert first.attributes["messaging.message.id"] == job_id
    assert first.attributes["kitium_queue.job.name"] == "send"
    assert (
        first.attributes["kitium_queue.job.attempt"],
        second.attributes["kitium_queue.job.attempt"],
    ) == (1, 2)
    # The failed run is marked; the retry links to the enqueue context and to it.
    assert first.status.status_code == StatusCode.ERROR
    assert any(e.name == "exception" for e in first.events)
    assert not first.links
    links = {link.attributes["kitium_queue.link"]: link.context.span_id for link in second.links}
    assert links == {"enqueue": publish.context.span_id, "previous-attempt": first.context.span_id}
    assert second.status.status_code != StatusCode.ERROR
    # The brief's adapter still sees its spans.
    assert adapter.names.count("kitium.process") == 2 and "kitium.enqueue" in adapter.names


async def test_bulk_given_ids_and_bad_traceparent(
    make_queue: QueueFactory,
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exported = spans
    q = make_queue("tb")
    OpenTelemetryTracing(q, tracer_provider=provider)
    ids = await q.add_jobs([("a", {}), ("b", {}, {"job_id": "mine-1"})])
    assert ids[1] == "mine-1"
    publishes = {
        s.attributes["messaging.message.id"]: s
        for s in exported.get_finished_spans()
        if s.name == "tb publish"
    }
    assert set(publishes) == set(ids)  # each ended once its job was written
    assert all("kitium_queue.enqueue.confirmed" not in s.attributes for s in publishes.values())
    # Each job of a bulk add has its own trace context, stored with it.
    infos = [await q.get_job_status(i) for i in ids]
    assert infos[0] is not None and infos[1] is not None
    assert infos[0].options[OPTION] != infos[1].options[OPTION]
    with pytest.raises(ConfigurationError, match="W3C traceparent"):
        await q.add_job("a", {}, traceparent="not-a-traceparent")
    # A caller's own context is kept as given (no publish span of ours).
    given = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    jid = await q.add_job("a", {}, traceparent=given)
    info = await q.get_job_status(jid)
    assert info is not None and info.options[OPTION] == given


async def test_without_tracing_the_option_is_refused(make_queue: QueueFactory) -> None:
    q = make_queue("tn")
    with pytest.raises(ConfigurationError, match="traceparent"):
        await q.add_job("a", {}, traceparent="00-" + "ab" * 16 + "-" + "cd" * 8 + "-01")


async def test_sampled_out_runs_make_no_span_but_carry_the_jobs_context(
    make_queue: QueueFactory,
) -> None:
    # Every root trace sampled out; the worker follows the stored flag.
    provider, exported = recording(ParentBased(TraceIdRatioBased(0.0)))
    q = make_queue("ts")
    OpenTelemetryTracing(q, tracer_provider=provider)
    seen: dict[str, tuple[Any, bool]] = {}

    @q.process("send")
    async def send(job: Any) -> None:
        current = trace.get_current_span().get_span_context()
        child = provider.get_tracer("app").start_span("inside")
        seen[job.id] = (current, child.is_recording())
        child.end()

    unsampled = await q.add_jobs([("send", {}) for _ in range(3)])
    # A caller's sampled context is followed too: that run is recorded.
    sampled_parent = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    sampled = await q.add_job("send", {}, traceparent=sampled_parent)
    await q.start()
    for jid in [*unsampled, sampled]:
        await wait_for_status(q, jid, JobStatus.COMPLETED)
    for jid in unsampled:
        info = await q.get_job_status(jid)
        assert info is not None
        stored = info.options[OPTION]
        assert stored.endswith(("-00", "-02"))  # not sampled
        current, child_recorded = seen[jid]
        # The job's own context is current: what the processor starts is dropped too.
        assert f"{current.trace_id:032x}" == stored[3:35]
        assert f"{current.span_id:016x}" == stored[36:52]
        assert not current.trace_flags.sampled and not child_recorded
    finished = exported.get_finished_spans()
    assert [s.name for s in finished if s.name != "inside"] == ["ts process"]
    [run] = [s for s in finished if s.name == "ts process"]
    assert run.attributes is not None and run.attributes["messaging.message.id"] == sampled
    assert run.parent is not None and run.parent.span_id == int("cd" * 8, 16)
    assert seen[sampled][1]  # the processor's own span is recorded under it


async def test_a_sampler_that_ignores_the_parent_is_asked(make_queue: QueueFactory) -> None:
    # ALWAYS_ON (not parent-based) records a run whose stored context was sampled out.
    provider, exported = recording(ALWAYS_ON)
    q = make_queue("ta")
    OpenTelemetryTracing(q, tracer_provider=provider)
    done: list[str] = []

    @q.process("send")
    async def send(job: Any) -> None:
        done.append(job.id)

    given = "00-" + "12" * 16 + "-" + "34" * 8 + "-00"
    jid = await q.add_job("send", {}, traceparent=given)
    await q.start()
    await wait_for_status(q, jid, JobStatus.COMPLETED)
    await wait_until(lambda: [s for s in exported.get_finished_spans() if s.name == "ta process"])
    [run] = [s for s in exported.get_finished_spans() if s.name == "ta process"]
    assert run.context.trace_id == int("12" * 16, 16)
    assert run.parent is not None and run.parent.span_id == int("34" * 8, 16)


async def test_a_noop_tracer_adds_and_runs_jobs_untraced(make_queue: QueueFactory) -> None:
    # No SDK set up: the tracer makes invalid spans; there is no context to carry.
    q = make_queue("tnoop")
    OpenTelemetryTracing(q, tracer_provider=trace.NoOpTracerProvider())
    ran: list[str] = []

    @q.process("send")
    async def send(job: Any) -> None:
        ran.append(job.id)

    jid = await q.add_job("send", {})
    ids = await q.add_jobs([("send", {}), ("send", {}, {"job_id": "own"})])
    info = await q.get_job_status(jid)
    assert info is not None and OPTION not in info.options
    await q.start()
    for one in [jid, *ids]:
        await wait_for_status(q, one, JobStatus.COMPLETED)
    assert sorted(ran) == sorted([jid, *ids]) and "own" in ids


def test_stored_traceparent_parsed_as_the_w3c_propagator_does() -> None:
    propagator = TraceContextTextMapPropagator()
    rng = random.Random(16)
    alphabet = "0123456789abcdefABCDEF-gz \t\n\x00\u00e9\ud800\U0001f600"
    valid = [
        f"{v}-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-{f:02x}"
        for v in ("00", "01", "fe")
        for f in (0, 1, 2, 3, 0xFF)
    ]
    cases = [
        *valid,
        "00-" + "0" * 32 + "-" + "1" * 16 + "-01",
        "00-" + "1" * 32 + "-" + "0" * 16 + "-01",
        "ff-" + "1" * 32 + "-" + "1" * 16 + "-01",
        "",
        "00",
    ]
    for _ in range(3000):
        chars = list(rng.choice(valid))
        for _ in range(rng.randint(1, 3)):
            op = rng.random()
            at = rng.randrange(len(chars) + 1)
            if op < 0.6 and at < len(chars):
                chars[at] = rng.choice(alphabet)
            elif op < 0.8:
                chars.insert(at, rng.choice(alphabet))
            elif chars:
                del chars[min(at, len(chars) - 1)]
        cases.append("".join(chars))
    for text in cases:
        ours = tracing._remote(text)
        theirs = trace.get_current_span(propagator.extract({"traceparent": text}))
        sc = theirs.get_span_context()
        if ours is None:
            # Refused: either the propagator refuses it too, or it is not the exact
            # 55-character form we store (the propagator also takes padding and
            # later versions' extra fields).
            assert not sc.is_valid or len(text) != 55 or text != text.strip()
            continue
        assert len(text) == 55 and sc.is_valid and sc.is_remote
        assert (ours.trace_id, ours.span_id) == (sc.trace_id, sc.span_id)
        assert ours.trace_flags == sc.trace_flags & 3 and ours.is_remote


def test_job_ids_are_version_4_uuids_and_a_forked_child_makes_its_own() -> None:
    ids = [tracing._new_job_id() for _ in range(3000)]
    assert len(set(ids)) == len(ids)
    for one in ids:
        parsed = uuid.UUID(one)
        assert str(parsed) == one and parsed.version == 4 and parsed.variant == uuid.RFC_4122
    tracing._new_job_id()  # the pool now holds ids the parent may still give out
    left = set(tracing._IDS)
    assert left
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.write(write, tracing._new_job_id().encode())
        finally:
            os._exit(0)
    os.close(write)
    child_id = os.read(read, 100).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert uuid.UUID(child_id).version == 4 and child_id not in left
