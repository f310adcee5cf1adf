"""OpenTelemetry tracing (issue 16, item 2), through a real Redis with the SDK's
in-memory exporter: the producer's publish span and the worker's process span share
the trace id; messaging attributes are set; a retry makes a second process span linked
to the enqueue context and to the first attempt; the brief's telemetry adapter still
works alongside; a bad traceparent is refused. Sampling: a run sampled out upstream
makes no span under a parent-based sampler yet has the job's context current, and is
traced as the sampler says under any other; a no-op tracer adds jobs untraced. The
stored traceparent is parsed as the W3C propagator parses it (fuzzed); job ids made
for tracing are version 4 UUIDs, never shared with a forked child.

Job dependencies ("workflow parents as links"): a fan-in step's process span links to
each parent's process span, and a step after it to the run of it that completed; a
retried step links to its parents, its publish span and its previous attempt; a plain
job added with ``depends_on`` links to its parent, also when added after the parent
finished; a parent sampled out (or a whole workflow sampled out) leaves no link and
breaks nothing; at most 32 parent links; the traceparents read back with the job are
untrusted. The engine's side of run links: ``tests/test_run_links.py``."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from helpers import QueueFactory, in_forked_child, wait_for_status, wait_until
from kitium_queue import ConfigurationError, JobStatus
from kitium_queue.features import tracing
from kitium_queue.features.tracing import MAX_PARENT_LINKS, OPTION, OpenTelemetryTracing
from kitium_queue.features.workflows import JobChainManager, WorkflowStep


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
    child_id = in_forked_child(tracing._new_job_id)
    assert uuid.UUID(child_id).version == 4 and child_id not in left


# ================================================================ workflow parents as links


class Traced:
    """A traced queue with workflows whose processor ``j`` records what each run
    follows (a job whose data says ``flaky`` fails its first attempt)."""

    def __init__(self, make_queue: QueueFactory, name: str, sampler: Any = None) -> None:
        self.provider, self.exported = recording(sampler)
        self.name = name
        self.queue = make_queue(name, worker={"concurrency": 8})
        OpenTelemetryTracing(self.queue, tracer_provider=self.provider)
        self.chains = JobChainManager(self.queue)
        self.follows: dict[str, Any] = {}
        self.queue.process("j")(self._run)

    async def _run(self, job: Any) -> None:
        self.follows[job.id] = job.follows
        if job.data and job.data.get("flaky") and job.attempts == 1:
            raise RuntimeError("first attempt fails")

    def runs(self) -> dict[tuple[str, int], ReadableSpan]:
        """The process spans by (job id, attempt)."""
        out = {}
        for s in self.exported.get_finished_spans():
            if s.name == f"{self.name} process" and s.attributes is not None:
                attempt = s.attributes["kitium_queue.job.attempt"]
                assert isinstance(attempt, int)
                out[(str(s.attributes["messaging.message.id"]), attempt)] = s
        return out

    async def ran(self, n: int, *, workflow: str | None = None) -> dict[Any, ReadableSpan]:
        """Start the worker, wait for ``workflow`` to complete (if given) and for ``n``
        process spans; returns them."""
        await self.queue.start()
        if workflow is not None:

            async def check() -> bool:
                st = await self.chains.get_workflow_status(workflow)
                return st is not None and st.state == "completed" and st.unfinished == 0

            await wait_until(check, 15)
        await wait_until(lambda: len(self.runs()) == n, 10)
        return self.runs()


def linked(span: ReadableSpan, kind: str) -> list[int]:
    """The span ids ``span`` links to with ``kitium_queue.link = kind``."""
    return [
        link.context.span_id
        for link in span.links
        if link.attributes is not None and link.attributes.get("kitium_queue.link") == kind
    ]


async def test_fan_in_links_to_each_parent_and_a_retry_keeps_its_links(
    make_queue: QueueFactory,
) -> None:
    t = Traced(make_queue, "tw")
    with t.provider.get_tracer("test").start_as_current_span("request") as outer:
        await t.chains.execute_workflow(
            "w",
            [
                WorkflowStep("a", "j"),
                WorkflowStep("b", "j"),
                WorkflowStep("c", "j"),
                WorkflowStep(
                    "d",
                    "j",
                    {"flaky": True},
                    depends_on=["a", "b", "c"],
                    retry_attempts=1,
                    options={"backoff": {"type": "fixed", "delay": 10}},
                ),
                WorkflowStep("e", "j", depends_on=["d"]),
            ],
        )
    got = await t.ran(6, workflow="w")
    roots = {got[(f"w:{x}", 1)].context.span_id for x in "abc"}
    d1, d2, e = got[("w:d", 1)], got[("w:d", 2)], got[("w:e", 1)]
    # One trace, from the caller's span through every step.
    assert {s.context.trace_id for s in got.values()} == {outer.get_span_context().trace_id}
    # The roots follow nothing.
    assert all(not got[(f"w:{x}", 1)].links for x in "abc")
    # The fan-in step links to each parent's run, on every attempt.
    assert sorted(linked(d1, "parent")) == sorted(roots) and len(d1.links) == 3
    assert sorted(linked(d2, "parent")) == sorted(roots)
    # Its retry keeps the retry links too: its publish context and the first attempt.
    [publish] = [
        s
        for s in t.exported.get_finished_spans()
        if s.name == "tw publish" and s.attributes and s.attributes["messaging.message.id"] == "w:d"
    ]
    assert linked(d2, "enqueue") == [publish.context.span_id]
    assert linked(d2, "previous-attempt") == [d1.context.span_id]
    # The step after it links to the run of it that completed, not the failed one.
    assert linked(e, "parent") == [d2.context.span_id] and len(e.links) == 1


async def test_depends_on_links_also_when_added_after_the_parent_finished(
    make_queue: QueueFactory,
) -> None:
    t = Traced(make_queue, "td")
    q = t.queue
    parent = await q.add_job("j", {})
    child = await q.add_job("j", {}, depends_on=[parent])
    lone = await q.add_job("j", {})
    await t.ran(3)
    # Its dependent was recorded before it ran: its run's context was kept.
    late = await q.add_job("j", {}, depends_on=[parent])
    await wait_for_status(q, late, JobStatus.COMPLETED)
    got = await t.ran(4)
    parent_span = got[(parent, 1)].context.span_id
    assert linked(got[(child, 1)], "parent") == [parent_span]
    assert linked(got[(late, 1)], "parent") == [parent_span]
    assert not got[(parent, 1)].links and not got[(lone, 1)].links
    assert t.follows[lone] is None  # in no relation: nothing asked of its run


async def test_sampled_out_parents_leave_no_link_and_break_nothing(
    make_queue: QueueFactory,
) -> None:
    t = Traced(make_queue, "tso")  # ParentBased(ALWAYS_ON): follows the stored flag
    q = t.queue
    unsampled = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-00"
    p1 = await q.add_job("j", {}, traceparent=unsampled)
    p2 = await q.add_job("j", {})
    child = await q.add_job("j", {}, depends_on=[p1, p2])
    # A dependent sampled out itself makes no span, whatever it follows.
    quiet = await q.add_job("j", {}, depends_on=[p2], traceparent=unsampled)
    got = await t.ran(2)
    for jid in (child, quiet):
        await wait_for_status(q, jid, JobStatus.COMPLETED)
    assert set(t.runs()) == {(p2, 1), (child, 1)}  # p1 and quiet were sampled out
    assert linked(got[(child, 1)], "parent") == [got[(p2, 1)].context.span_id]
    assert t.follows[p1] == () and len(t.follows[child]) == 1


async def test_a_workflow_sampled_out_runs_untraced(make_queue: QueueFactory) -> None:
    t = Traced(make_queue, "tsz", ParentBased(TraceIdRatioBased(0.0)))
    await t.chains.execute_workflow(
        "z",
        [
            WorkflowStep("a", "j"),
            WorkflowStep("b", "j"),
            WorkflowStep("c", "j", depends_on=["a", "b"]),
        ],
    )
    assert await t.ran(0, workflow="z") == {}
    # No run left a context: the parents are followed (so asked for one), the leaf
    # follows nothing recorded and nothing follows it.
    assert t.follows == {"z:a": (), "z:b": (), "z:c": None}


async def test_at_most_32_parent_links(make_queue: QueueFactory) -> None:
    t = Traced(make_queue, "tcap")
    parents = [f"p{i}" for i in range(MAX_PARENT_LINKS + 8)]
    await t.chains.execute_workflow(
        "cap",
        [*(WorkflowStep(p, "j") for p in parents), WorkflowStep("fan", "j", depends_on=parents)],
    )
    got = await t.ran(len(parents) + 1, workflow="cap")
    ids = linked(got[("cap:fan", 1)], "parent")
    assert len(ids) == MAX_PARENT_LINKS == 32 == len(set(ids))
    assert set(ids) <= {got[(f"cap:{p}", 1)].context.span_id for p in parents}


async def test_traceparents_read_back_are_untrusted(make_queue: QueueFactory) -> None:
    t = Traced(make_queue, "tun")
    jid = await t.queue.add_job("j", {})
    good = [f"00-{i + 1:032x}-{i + 1:016x}-01" for i in range(40)]
    bad = [
        "00-" + "0" * 32 + "-" + "1" * 16 + "-01",  # zero trace id
        "00-" + "1" * 32 + "-" + "0" * 16 + "-01",  # zero span id
        "ff-" + "1" * 32 + "-" + "1" * 16 + "-01",  # version ff
        "00-" + "G" * 32 + "-" + "1" * 16 + "-01",
        "<script>",
        "x" * 300,
    ]
    client = await t.queue.client()
    await client.hset(t.queue.keys.job(jid), "fw", "\n".join([*bad, *good]))
    [span] = (await t.ran(1)).values()
    # The first 32 lines reach the job ("x" * 300 is dropped there); the bad ones
    # make no link.
    expected = [int(g[36:52], 16) for g in good[: 32 - len(bad)]]
    assert linked(span, "parent") == expected
