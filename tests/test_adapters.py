"""The brief's observability adapters: ``metrics`` (increment/observe) and ``telemetry``
(start_span -> span with set_attribute/record_exception/end), called around enqueue and
processing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from helpers import QueueFactory, wait_for_status
from kitium_queue import JobStatus, NonRetryableError


class RecordingMetrics:
    def __init__(self) -> None:
        self.counts: list[tuple[str, float, dict[str, str]]] = []
        self.observations: list[tuple[str, float, dict[str, str]]] = []

    def increment(self, name: str, value: float = 1, tags: Mapping[str, str] | None = None) -> None:
        self.counts.append((name, value, dict(tags or {})))

    def observe(self, name: str, value: float, tags: Mapping[str, str] | None = None) -> None:
        self.observations.append((name, value, dict(tags or {})))

    def total(self, name: str, **tags: str) -> float:
        return sum(
            v
            for n, v, t in self.counts
            if n == name and all(t.get(k) == x for k, x in tags.items())
        )


class RecordingSpan:
    def __init__(self, name: str, attributes: Mapping[str, Any] | None) -> None:
        self.name = name
        self.attributes = dict(attributes or {})
        self.exceptions: list[BaseException] = []
        self.ended = 0

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def record_exception(self, error: BaseException) -> None:
        self.exceptions.append(error)

    def end(self) -> None:
        self.ended += 1


class RecordingTracer:
    def __init__(self) -> None:
        self.spans: list[RecordingSpan] = []

    def start_span(self, name: str, attributes: Mapping[str, Any] | None = None) -> RecordingSpan:
        span = RecordingSpan(name, attributes)
        self.spans.append(span)
        return span


async def test_metrics_adapter_counts_every_outcome(make_queue: QueueFactory) -> None:
    metrics = RecordingMetrics()
    queue = make_queue("metrics", metrics=metrics)

    @queue.process("ok")
    async def ok(job: Any) -> str:
        return "fine"

    @queue.process("flaky")
    async def flaky(job: Any) -> str:
        if job.attempts == 1:
            raise RuntimeError("first attempt fails")
        return "second"

    @queue.process("fatal")
    async def fatal(job: Any) -> None:
        raise NonRetryableError("no")

    ids = [await queue.add_job("ok", {}), await queue.add_job("ok", {})]
    ids += await queue.add_jobs([("flaky", {}, {"backoff": {"type": "fixed", "delay": 10}})])
    ids.append(await queue.add_job("fatal", {}))
    await queue.start()
    for i in ids[:3]:
        await wait_for_status(queue, i, JobStatus.COMPLETED)
    await wait_for_status(queue, ids[3], JobStatus.DLQ)

    assert metrics.total("jobs.added", queue="metrics") == 4
    assert metrics.total("jobs.completed", job_name="ok") == 2
    assert metrics.total("jobs.completed", job_name="flaky") == 1
    assert metrics.total("jobs.retried", job_name="flaky") == 1
    assert metrics.total("jobs.failed", job_name="fatal") == 1
    assert metrics.total("jobs.dlq", job_name="fatal") == 1
    assert metrics.total("jobs.started") == 5  # 2 ok + 2 flaky runs + 1 fatal
    durations = [o for o in metrics.observations if o[0] == "job.duration_ms"]
    assert len(durations) == 3 and all(v >= 0 for _, v, _ in durations)
    assert all(t["queue"] == "metrics" for _, _, t in durations)
    waits = [o for o in metrics.observations if o[0] == "job.wait_ms"]
    assert len(waits) == 5 and all(v >= 0 for _, v, _ in waits)


async def test_telemetry_adapter_spans_enqueue_and_processing(make_queue: QueueFactory) -> None:
    tracer = RecordingTracer()
    queue = make_queue("traced", telemetry=tracer)

    @queue.process("work")
    async def work(job: Any) -> int:
        if job.data["fail"]:
            raise ValueError("boom")
        return 1

    good = await queue.add_job("work", {"fail": False})
    bad = await queue.add_job("work", {"fail": True}, attempts=1)
    await queue.start()
    await wait_for_status(queue, good, JobStatus.COMPLETED)
    await wait_for_status(queue, bad, JobStatus.DLQ)

    enqueue = [s for s in tracer.spans if s.name == "kitium.enqueue"]
    process = {s.attributes["job.id"]: s for s in tracer.spans if s.name == "kitium.process"}
    assert len(enqueue) == 2 and all(s.ended == 1 for s in enqueue)
    assert enqueue[0].attributes["queue"] == "traced"
    assert set(process) == {good, bad}
    assert process[good].attributes == {
        "queue": "traced",
        "job.id": good,
        "job.name": "work",
        "job.attempt": 1,
    }
    assert process[good].ended == 1 and process[good].exceptions == []
    assert process[bad].ended == 1
    assert [type(e) for e in process[bad].exceptions] == [ValueError]


async def test_a_failing_adapter_call_is_an_enqueue_error_not_a_silent_loss(
    make_queue: QueueFactory,
) -> None:
    class Broken:
        def start_span(self, name: str, attributes: Any = None) -> Any:
            raise RuntimeError("tracer down")

    queue = make_queue("broken", telemetry=Broken())
    try:
        await queue.add_job("x", {})
    except RuntimeError as exc:
        assert "tracer down" in str(exc)
    else:  # pragma: no cover - the assertion documents the behaviour
        raise AssertionError("the tracer's error should surface to the caller")
    assert (await queue.get_stats()).waiting == 0
