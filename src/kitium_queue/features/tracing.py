"""OpenTelemetry tracing (optional extra ``otel``): a trace from producer to worker.

``OpenTelemetryTracing(queue)`` enables it on one queue (in every process that adds or
runs its jobs, like ``queue.process`` registrations):

* **Carrier.** The job option ``traceparent`` (declared through the option registry,
  stored with the job) holds the W3C ``traceparent`` of the job's publish span. It is
  set by the enqueue middleware; a caller may also pass one (``add_job(...,
  traceparent="00-...")``) to attach a job to a trace of its own. ``tracestate`` is not
  carried. A schedule's jobs are not given the context of the code that declared the
  schedule: each of their runs starts a trace of its own.
* **Publish span** ``<queue> publish`` (kind PRODUCER), a child of the caller's current
  span, started by the enqueue middleware and ended when the job is written (the
  ``enqueued`` hook), so it covers the Redis write. To know the job's id before it is
  written, a job added without ``job_id`` is given one, ``str(uuid4())`` (as payload
  encryption does); a job whose add failed has its span ended after
  ``pending_timeout`` seconds, marked ``kitium_queue.enqueue.confirmed = false``.
* **Process span** ``<queue> process`` (kind CONSUMER) around every run (process
  middleware), a child of the publish context: producer and worker share the trace id.
  A run that raises records the exception and sets the status to ERROR. A retry (attempt
  2 and later) carries links: to the publish context (``kitium_queue.link =
  enqueue``) and, when this process ran the previous attempt, to that attempt's span
  (``previous-attempt``).

Attributes follow the messaging semantic conventions: ``messaging.system`` =
``kitium-queue``, ``messaging.destination.name`` (queue), ``messaging.operation`` /
``messaging.operation.type`` (``publish``/``send``, ``process``/``process``),
``messaging.message.id`` (job id), plus ``kitium_queue.job.name`` and
``kitium_queue.job.attempt``. The brief's ``telemetry`` adapter (``kitium.enqueue`` /
``kitium.process`` spans) is separate and keeps working alongside.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .._version import __version__
from ..errors import ConfigurationError
from ..hooks import Subscriber
from ..limits import get_logger
from ..middleware import enqueue_origin

__all__ = ["FEATURE", "OPTION", "OpenTelemetryTracing"]

log = get_logger(__name__)

FEATURE = "opentelemetry"
#: The stored job option carrying the W3C traceparent.
OPTION = "traceparent"
SYSTEM = "kitium-queue"
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_PROPAGATOR = TraceContextTextMapPropagator()
#: Spans kept for matching (publish spans awaiting their write, previous attempts).
_MAX_PENDING = 10_000


def _normalize(value: Any, section: str) -> str:
    if not isinstance(value, str) or not _TRACEPARENT.fullmatch(value):
        raise ConfigurationError(
            f"{section} option {OPTION!r} must be a W3C traceparent such as "
            "'00-<32 hex trace id>-<16 hex span id>-01', got a "
            f"{type(value).__name__} that is not one; leave it unset to let tracing set it"
        )
    return value


def _parent(traceparent: str) -> otel_context.Context | None:
    """The remote parent context of a stored traceparent (read back from Redis:
    untrusted, so matched whole first); None when it is not a valid one."""
    if len(traceparent) != 55 or not _TRACEPARENT.fullmatch(traceparent):
        return None
    trace_id, span_id = int(traceparent[3:35], 16), int(traceparent[36:52], 16)
    if not trace_id or not span_id or traceparent[:2] == "ff":
        return None
    sc = SpanContext(
        trace_id,
        span_id,
        is_remote=True,
        trace_flags=TraceFlags(int(traceparent[53:55], 16) & 0x01),
    )
    return trace.set_span_in_context(NonRecordingSpan(sc))


class OpenTelemetryTracing(Subscriber):
    """Trace the jobs of ``queue`` with OpenTelemetry (see the module docstring).

    Args:
        queue: the ``JobQueue``.
        tracer_provider: the provider to get the tracer from (the global one when None).
        pending_timeout: seconds a publish span waits for its job's write before it is
            ended as unconfirmed.
    """

    def __init__(
        self, queue: Any, *, tracer_provider: Any = None, pending_timeout: float = 30.0
    ) -> None:
        self.queue = queue
        self.name = queue.name
        self.tracer = trace.get_tracer("kitium_queue", __version__, tracer_provider=tracer_provider)
        self.pending_timeout = pending_timeout
        # job id -> (publish span, started at, monotonic); insertion order = age order.
        self._pending: OrderedDict[str, tuple[Any, float]] = OrderedDict()
        # job id -> span context of the latest failed run seen here.
        self._previous: OrderedDict[str, Any] = OrderedDict()
        self._publish_name = f"{self.name} publish"
        self._process_name = f"{self.name} process"
        queue.declare_option(
            OPTION,
            feature=FEATURE,
            normalize=_normalize,
            doc="W3C traceparent of the job's publish span (set by OpenTelemetryTracing)",
        )
        queue.use_enqueue(self._on_enqueue)
        queue.use_process(self._on_process)
        queue.subscribe(self)

    # ------------------------------------------------------------------ producer
    def _on_enqueue(
        self, job_name: str, data: Any, options: Mapping[str, Any]
    ) -> tuple[str, Any, Mapping[str, Any]]:
        if enqueue_origin.get() is not None or options.get(OPTION) is not None:
            return job_name, data, options  # a schedule's template, or a given context
        out = dict(options)
        job_id = out.get("job_id")
        if job_id is None:
            job_id = out["job_id"] = str(uuid.uuid4())
        span = self.tracer.start_span(
            self._publish_name,
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.destination.name": self.name,
                "messaging.operation": "publish",
                "messaging.operation.type": "send",
                "messaging.message.id": str(job_id),
                "kitium_queue.job.name": job_name,
            },
        )
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
        out[OPTION] = carrier["traceparent"]
        self._sweep()
        if isinstance(job_id, str):
            self._pending[job_id] = (span, time.monotonic())
            if len(self._pending) > _MAX_PENDING:
                self._end_pending(*self._pending.popitem(last=False)[1], confirmed=False)
        else:  # a bad job_id: the add will refuse it with its own error
            span.end()
        return job_name, data, out

    def enqueued(self, queue: str, job_ids: Sequence[str], names: Sequence[str]) -> None:
        pending = self._pending
        if not pending:
            return
        for job_id in job_ids:
            got = pending.pop(job_id, None)
            if got is not None:
                got[0].end()

    def _sweep(self) -> None:
        pending, limit = self._pending, time.monotonic() - self.pending_timeout
        while pending:
            job_id, (span, at) = next(iter(pending.items()))
            if at > limit:
                return
            del pending[job_id]
            self._end_pending(span, at, confirmed=False)

    @staticmethod
    def _end_pending(span: Any, at: float, *, confirmed: bool) -> None:
        span.set_attribute("kitium_queue.enqueue.confirmed", confirmed)
        span.end()

    # ------------------------------------------------------------------ worker
    async def _on_process(self, job: Any, call_next: Callable[[], Awaitable[Any]]) -> Any:
        raw = job.options.get(OPTION) if isinstance(job.options, dict) else None
        parent = _parent(raw) if isinstance(raw, str) else None
        links: list[Link] = []
        if job.attempts > 1:
            if parent is not None:
                sc = trace.get_current_span(parent).get_span_context()
                if sc.is_valid:
                    links.append(Link(sc, {"kitium_queue.link": "enqueue"}))
            prev = self._previous.pop(job.id, None)
            if prev is not None:
                links.append(Link(prev, {"kitium_queue.link": "previous-attempt"}))
        span = self.tracer.start_span(
            self._process_name,
            context=parent,
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.destination.name": self.name,
                "messaging.operation": "process",
                "messaging.operation.type": "process",
                "messaging.message.id": job.id,
                "kitium_queue.job.name": job.name,
                "kitium_queue.job.attempt": job.attempts,
            },
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            result = await call_next()
        except BaseException as exc:
            if isinstance(exc, Exception):
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                self._previous[job.id] = span.get_span_context()
                if len(self._previous) > _MAX_PENDING:
                    self._previous.popitem(last=False)
            raise
        finally:
            otel_context.detach(token)
            span.end()
        return result
