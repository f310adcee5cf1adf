"""OpenTelemetry tracing (issue 16, item 2), through a real Redis with the SDK's
in-memory exporter: the producer's publish span and the worker's process span share
the trace id; messaging attributes are set; a retry makes a second process span linked
to the enqueue context and to the first attempt; the brief's telemetry adapter still
works alongside; a bad traceparent is refused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from helpers import QueueFactory, wait_until
from kitium_queue import ConfigurationError, JobStatus
from kitium_queue.features.tracing import OPTION, OpenTelemetryTracing


@pytest.fixture
async def make_queue(redis_url: str, prefix: str) -> AsyncIterator[QueueFactory]:
    factory = QueueFactory(redis_url, prefix)
    yield factory
    await factory.aclose()


@pytest.fixture
def spans() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


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
