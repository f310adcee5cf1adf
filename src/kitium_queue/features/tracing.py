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
  written, a job added without ``job_id`` is given one, a random version 4 UUID in its
  usual text form (as payload encryption does; drawn from ``os.urandom`` 256 at a
  time); an add that found its job there already (the same ``job_id``) ends it at
  once, marked ``kitium_queue.enqueue.duplicate = true`` (the ``duplicate`` hook); a
  job whose add failed has its span ended by the first add ``pending_timeout`` seconds
  later, marked ``kitium_queue.enqueue.confirmed = false``.
* **Process span** ``<queue> process`` (kind CONSUMER) around every run (process
  middleware), a child of the publish context: producer and worker share the trace id.
  A run that raises (any exception, a cancellation by its timeout or by ``cancel_job``
  included; not a stop handing it back, nor a lost lease) sets the status to ERROR and
  records the exception as an ``exception`` event, bounded (``_exception_attributes``).
  A retry (attempt 2 and later) carries links: to the publish context
  (``kitium_queue.link = enqueue``) and, when this process ran the previous attempt, to
  that attempt's span (``previous-attempt``).
* **Parents** (run links, ``Job.follows``). A job whose run follows other runs (a
  workflow step, a job added with ``depends_on``) links to its parents' process spans
  (``kitium_queue.link = parent``), at most ``MAX_FOLLOWS`` (32): a sampled run of a
  job that takes part in run links sets ``job.run_context`` to its process span's
  traceparent, which the worker sends with the outcome and the workflows feature hands
  to the dependents' records in the script that releases them; the dependents' runs
  read them with the job at claim, with no extra round trip. A parent whose run was
  sampled out (or not traced) leaves no context and gets no link.
* **Process mode.** The run's context goes with the job to a child process
  (``carry_to_child``), where ``enter_in_child`` makes it current around the processor.

Attributes follow the messaging semantic conventions: ``messaging.system`` =
``kitium-queue``, ``messaging.destination.name`` (queue), ``messaging.operation`` /
``messaging.operation.type`` (``publish``/``send``, ``process``/``process``),
``messaging.message.id`` (job id), plus ``kitium_queue.job.name`` and
``kitium_queue.job.attempt``. The ``telemetry`` adapter (``kitium.enqueue`` /
``kitium.process`` spans) is separate and keeps working alongside.

Cost (docs/observability.md): per job, the SDK's span is most of it. A run whose stored
context says *not sampled* makes no span when the tracer's sampler is known to drop
every span under an unsampled parent (the SDK's ``ParentBased`` samplers with their
defaults for that case, which the SDK's default sampler is): the job's context is made
current as it is, which is what the SDK's span would have given the processor. With any
other sampler the SDK is asked for every run. A span that is not recording is not kept
waiting for its job's write. A job without run links (``job.follows`` is None: no
parent, no dependent) costs one attribute read more; each parent link costs a few
microseconds (the traceparent checked and parsed, and the SDK's copy of the link).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from ..errors import ConfigurationError, install_hint

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import (
        INVALID_SPAN_CONTEXT,
        Link,
        NonRecordingSpan,
        ProxyTracer,
        ProxyTracerProvider,
        SpanContext,
        SpanKind,
        Status,
        StatusCode,
        TraceFlags,
        TraceState,
    )
except ImportError as exc:  # pragma: no cover - depends on the environment
    # Missing, or installed in part (the ``opentelemetry`` namespace of another
    # distribution, an API package without ``trace`` or too old): what is imported above
    # is what the feature uses, so this is the one check of the extra.
    raise ImportError(
        "OpenTelemetry tracing needs the optional extra 'otel', which is not installed or "
        f"not importable ({exc}): "
        + install_hint(
            "otel", "opentelemetry-api; an SDK such as opentelemetry-sdk exports the spans"
        )
    ) from exc

from .._version import __version__
from ..hooks import Subscriber
from ..limits import MAX_ERROR_CHARS, MAX_FOLLOWS, clip, get_logger, safe_text, wire_text
from ..middleware import (
    MAX_CHILD_CONTEXT_CHARS,
    carry_to_child,
    child_contexts,
    enqueue_origin,
    entered_in_child,
)
from ..outcomes import safe_name, traceback_text
from ..runends import FAILING_CANCELS

__all__ = ["FEATURE", "OPTION", "OpenTelemetryTracing", "enter_in_child"]

log = get_logger(__name__)

FEATURE = "opentelemetry"
#: The stored job option carrying the W3C traceparent.
OPTION = "traceparent"
SYSTEM = "kitium-queue"
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
#: The trace flags of each flags field, W3C's two (sampled, random trace id) kept.
_FLAGS = {f"{bits:02x}": TraceFlags(bits & 3) for bits in range(256)}
#: The flags fields of a context that was not sampled.
_NOT_SAMPLED = frozenset(text for text, flags in _FLAGS.items() if not flags & 1)
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16
#: Spans kept for matching (publish spans awaiting their write, previous attempts).
_MAX_PENDING = 10_000
#: Most links to parents' runs per process span (the core hands out no more either).
MAX_PARENT_LINKS = MAX_FOLLOWS
#: Longest ``pending_timeout`` (s): a publish span is not kept open longer.
MAX_PENDING_S = 86_400.0
#: Seconds between two warnings about a tracer (or its span processors) that raises.
_WARN_EVERY_S = 60.0


def _normalize(value: Any, section: str) -> str:
    # The same check as a worker makes on what it reads back (``_valid``): a value it
    # would ignore is refused here, where the caller can still be told.
    if not isinstance(value, str) or not _valid(value):
        raise ConfigurationError(
            f"{section} option {OPTION!r} must be a W3C traceparent such as "
            "'00-<32 lowercase hex trace id>-<16 lowercase hex span id>-01' (version not "
            f"'ff', ids not all zero), got a {type(value).__name__} that is not one; "
            "leave it unset to let tracing set it"
        )
    return value


def _valid(traceparent: str) -> bool:
    """Whether a stored traceparent (read back from Redis: untrusted) is a valid W3C
    one: the exact form, a version other than ``ff``, trace and span ids not zero."""
    return (
        _TRACEPARENT.fullmatch(traceparent) is not None
        and traceparent[:2] != "ff"
        and traceparent[3:35] != _ZERO_TRACE
        and traceparent[36:52] != _ZERO_SPAN
    )


def _span_context(traceparent: str) -> SpanContext:
    """The remote span context of a valid traceparent (``_valid``). Flag bits W3C does
    not define are dropped."""
    return SpanContext(
        int(traceparent[3:35], 16), int(traceparent[36:52], 16), True, _FLAGS[traceparent[53:]]
    )


def _remote(traceparent: str) -> SpanContext | None:
    """The remote span context of a stored traceparent; None when it is not valid."""
    return _span_context(traceparent) if _valid(traceparent) else None


def _exception_attributes(exc: BaseException) -> dict[str, Any]:
    """The attributes of the ``exception`` event of a run that raised ``exc``, as the
    semantic conventions name them, each bounded as the job's own record of the failure
    is: the type and message at most ``MAX_ERROR_CHARS`` characters, the stacktrace the
    one recorded on the job (at most ``MAX_TRACEBACK_CHARS``, innermost frames kept).

    The SDK's ``record_exception`` is not used: it copies a message and stacktrace of any
    size into the span (a span of megabytes is refused by the exporter's transport with
    the rest of its batch), and it fails on an exception whose ``__str__`` raises or
    returns something else than a string. Here such a message reads as
    ``<unprintable Type>`` (``safe_text``), and text UTF-8 cannot carry (lone
    surrogates) is escaped, so the exporter can encode every attribute."""
    cls = type(exc)
    qualname = getattr(cls, "__qualname__", None)
    if type(qualname) is not str:
        qualname = safe_name(exc)
    module = getattr(cls, "__module__", None)
    if type(module) is str and module and module != "builtins":
        qualname = f"{module}.{qualname}"
    return {
        "exception.type": wire_text(qualname, MAX_ERROR_CHARS).decode(),
        "exception.message": wire_text(safe_text(exc), MAX_ERROR_CHARS).decode(),
        "exception.stacktrace": traceback_text(exc).decode(),
        # It leaves the span: the run raised it.
        "exception.escaped": True,
    }


class _StoredContext(NonRecordingSpan):
    """The current span of a run that makes none (sampled out upstream): the job's
    stored context, its ids read from the traceparent the first time they are asked
    for (most processors never ask)."""

    def __init__(self, traceparent: str) -> None:  # no super().__init__: one per run
        self._context = INVALID_SPAN_CONTEXT
        self._traceparent: str | None = traceparent

    def get_span_context(self) -> SpanContext:
        traceparent = self._traceparent
        if traceparent is not None:
            self._context = _span_context(traceparent)
            self._traceparent = None
        return self._context

    def __repr__(self) -> str:
        return f"NonRecordingSpan({self.get_span_context()!r})"


#: Job ids made and not given yet (a forked child drops its parent's: see below).
_IDS: list[str] = []
#: The variant field (RFC 9562: 10xx) of each first hex digit of that group.
_VARIANT = {f"{n:x}": f"{8 | (n & 3):x}" for n in range(16)}


def _new_job_id() -> str:
    """A random version 4 UUID as ``str(uuid.uuid4())`` writes it, cheaper: the random
    bytes of 256 ids are read from ``os.urandom`` at once."""
    while True:
        try:
            return _IDS.pop()
        except IndexError:  # empty (another thread may have taken the last one)
            raw = os.urandom(16 * 256).hex()
            variant = _VARIANT
            _IDS.extend(
                f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant[h[16]]}{h[17:20]}-{h[20:32]}"
                for h in (raw[i : i + 32] for i in range(0, len(raw), 32))
            )


if hasattr(os, "register_at_fork"):  # POSIX: a child of fork() must not give out the
    os.register_at_fork(after_in_child=_IDS.clear)  # ids its parent may give out too


def _traceparent(sc: SpanContext) -> str:
    """The W3C traceparent of ``sc`` (as the W3C propagator writes it)."""
    return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{sc.trace_flags:02x}"


class _ChildTrace:
    """The run's trace context, carried to a processor run in a child process
    (``middleware.carry_to_child``): the traceparent of the span current where the
    processor would run (the process span, or the job's stored context when the run
    makes none), and its tracestate when the two fit in ``MAX_CHILD_CONTEXT_CHARS``."""

    __slots__ = ()
    enter = f"{__name__}:enter_in_child"

    def capture(self) -> str | None:
        sc = trace.get_current_span().get_span_context()  # (raising: ``carried`` warns)
        if not sc.is_valid:
            return None
        text = _traceparent(sc)
        state = sc.trace_state.to_header() if sc.trace_state else ""
        if state and len(state) < MAX_CHILD_CONTEXT_CHARS - len(text):
            text = f"{text} {state}"  # else dropped, as W3C lets a hop drop it
        return text


_CHILD = _ChildTrace()
_ALONE = (_CHILD,)  # what runs carry when no other middleware carries anything


@entered_in_child
def enter_in_child(text: str) -> Callable[[], Any] | None:
    """In the child process running the job (``carried``): make the worker's run
    context current for the processor, a remote parent, so the spans it starts are
    children of the run's span. ``text`` is read back from the worker's pipe (untrusted):
    ``<traceparent>[ <tracestate>]``, anything else is ignored (the tracestate alone
    when it is not a valid one). Returns the detach."""
    traceparent, _, state = text.partition(" ")
    if not _valid(traceparent):
        return None
    sc = _span_context(traceparent)
    if state:
        trace_state = TraceState.from_header([state])  # invalid: empty (W3C: drop it)
        sc = SpanContext(sc.trace_id, sc.span_id, True, sc.trace_flags, trace_state)
    token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(sc)))
    return lambda: otel_context.detach(token)


def _parent_links(follows: Sequence[str], links: list[Link] | None) -> list[Link]:
    """``links`` (or a new list) with a link to each parent's run in ``follows`` (the
    traceparents its workflow recorded: read back from Redis, untrusted: anything but
    a valid traceparent is skipped), at most ``MAX_PARENT_LINKS``."""
    out = links if links is not None else []
    for text in follows[:MAX_PARENT_LINKS]:
        if isinstance(text, str) and _valid(text):
            out.append(Link(_span_context(text), {"kitium_queue.link": "parent"}))
    return out


def _drops_unsampled(tracer: Any) -> bool | None:
    """Whether every span ``tracer`` starts under a parent that was not sampled, remote
    or local, is known to be dropped: True for the SDK's tracer with a ``ParentBased``
    sampler whose samplers for those two cases are static drops (their default); False
    when that is not known; None while ``tracer`` is the global proxy and the
    application has not set a provider yet (ask again later)."""
    sampler = getattr(tracer, "sampler", None)
    if sampler is None and isinstance(tracer, ProxyTracer):
        provider = trace.get_tracer_provider()
        if isinstance(provider, ProxyTracerProvider):
            return None
        sampler = getattr(provider, "sampler", None)  # the one its tracers take
    try:
        from opentelemetry.sdk.trace.sampling import Decision, ParentBased, StaticSampler
    except ImportError:  # pragma: no cover - no SDK: nothing records anyway
        return False
    if not isinstance(sampler, ParentBased):
        return False
    for case in ("_remote_parent_not_sampled", "_local_parent_not_sampled"):
        delegate = getattr(sampler, case, None)
        if not isinstance(delegate, StaticSampler) or delegate._decision is not Decision.DROP:
            return False
    return True


class OpenTelemetryTracing(Subscriber):
    """Trace the jobs of ``queue`` with OpenTelemetry (see the module docstring).

    Args:
        queue: the ``JobQueue``.
        tracer_provider: the provider to get the tracer from (the global one when None).
        pending_timeout: seconds a publish span waits for its job's write before it is
            ended as unconfirmed (a finite number above 0, at most a day; anything else
            raises ``ConfigurationError``).
    """

    def __init__(
        self, queue: Any, *, tracer_provider: Any = None, pending_timeout: float = 30.0
    ) -> None:
        if (
            isinstance(pending_timeout, bool)
            or not isinstance(pending_timeout, (int, float))
            or not 0 < pending_timeout <= MAX_PENDING_S  # NaN is neither
        ):
            raise ConfigurationError(
                "OpenTelemetryTracing pending_timeout must be a number of seconds above 0 "
                f"and at most {MAX_PENDING_S:g} (a day), got {pending_timeout!r:.40}"
            )
        self.queue = queue
        self.name = queue.name
        self.tracer = trace.get_tracer("kitium_queue", __version__, tracer_provider=tracer_provider)
        self.pending_timeout = float(pending_timeout)
        # Whether a run sampled out upstream may skip its span (the sampler is known to
        # drop it): decided once the tracer provider is known (_drops_unsampled).
        self._drops: bool | None = None
        # job id -> (publish span, started at, monotonic); insertion order = age order.
        self._pending: OrderedDict[str, tuple[Any, float]] = OrderedDict()
        # job id -> span context of the latest failed run seen here.
        self._previous: OrderedDict[str, Any] = OrderedDict()
        self._publish_name = f"{self.name} publish"
        self._failed_at = -_WARN_EVERY_S  # last warning about a raising tracer
        self._failures = 0  # failures since that warning
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
        if job_id is None:  # made here: no idempotency window to hold (jobspec)
            job_id = out["job_id"] = _new_job_id()
            out["job_id_window"] = False
        try:
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
            sc = span.get_span_context()
            if sc.is_valid:  # a no-op tracer (no SDK set up) has no context to carry
                out[OPTION] = _traceparent(sc)
            if not span.is_recording():
                return job_name, data, out  # sampled out: nothing to end
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # the tracer's fault: the job is added untraced
            self._tracer_failed(exc)
            return job_name, data, options
        pending = self._pending
        if pending:
            self._sweep()
        if isinstance(job_id, str):
            pending[job_id] = (span, time.monotonic())
            if len(pending) > _MAX_PENDING:
                self._end_pending(*pending.popitem(last=False)[1], confirmed=False)
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
                try:
                    got[0].end()
                except (KeyboardInterrupt, SystemExit):
                    raise
                except BaseException as exc:  # the other spans of the batch still end
                    self._tracer_failed(exc)

    def duplicate(self, queue: str, job_ids: Sequence[str], names: Sequence[str]) -> None:
        """Adds that wrote nothing, their job being there already (the same ``job_id``):
        the publish span ends now, marked ``kitium_queue.enqueue.duplicate = true``,
        rather than ``pending_timeout`` later as an add that failed. (An idempotency
        key's duplicate names the existing job, not the id this add was given: its span
        ends as unconfirmed.)"""
        pending = self._pending
        for job_id in job_ids if pending else ():
            got = pending.pop(job_id, None)
            if got is not None:
                try:
                    got[0].set_attribute("kitium_queue.enqueue.duplicate", True)
                    got[0].end()
                except (KeyboardInterrupt, SystemExit):
                    raise
                except BaseException as exc:  # the other spans of the batch still end
                    self._tracer_failed(exc)

    def _sweep(self) -> None:
        pending, limit = self._pending, time.monotonic() - self.pending_timeout
        while pending:
            job_id, (span, at) = next(iter(pending.items()))
            if at > limit:
                return
            del pending[job_id]
            self._end_pending(span, at, confirmed=False)

    def _tracer_failed(self, exc: BaseException) -> None:
        """A call into the tracer (or its span processors) raised: tracing is lost for
        that span, never the job's add or run. Warned about once a minute at most."""
        self._failures += 1
        now = time.monotonic()
        if now - self._failed_at < _WARN_EVERY_S:
            return
        self._failed_at, count, self._failures = now, self._failures, 0
        log.warning(
            "queue %s: the OpenTelemetry tracer raised %s (%d time(s) since the last "
            "warning); the spans concerned are lost, the jobs are added and run as usual",
            self.name,
            safe_name(exc),
            count,
            exc_info=exc,
        )

    def _end_pending(self, span: Any, at: float, *, confirmed: bool) -> None:
        try:
            span.set_attribute("kitium_queue.enqueue.confirmed", confirmed)
            span.end()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            self._tracer_failed(exc)

    # ------------------------------------------------------------------ worker
    async def _on_process(self, job: Any, call_next: Callable[[], Awaitable[Any]]) -> Any:
        options = job.options
        raw = options.get(OPTION) if isinstance(options, dict) else None
        remote = parent = None
        if isinstance(raw, str) and _valid(raw):
            if raw[53:] in _NOT_SAMPLED:
                drops = self._drops
                if drops is None:
                    drops = self._drops = _drops_unsampled(self.tracer)
                if drops:
                    # Sampled out upstream: the sampler would drop the run's span. The
                    # job's context is made current as it is, so what the processor
                    # starts follows the same decision.
                    token = otel_context.attach(trace.set_span_in_context(_StoredContext(raw)))
                    carry = (
                        child_contexts.set(_ALONE)
                        if not child_contexts.get()
                        else carry_to_child(_CHILD)
                    )
                    try:
                        return await call_next()
                    finally:
                        child_contexts.reset(carry)
                        otel_context.detach(token)
            remote = _span_context(raw)
            parent = trace.set_span_in_context(NonRecordingSpan(remote))
        follows = job.follows
        links = self._links(job, remote) if job.attempts > 1 else None
        if follows:
            links = _parent_links(follows, links)
        try:
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
            if follows is not None:
                # Its dependents' runs link to this one (sent with the outcome): only a
                # sampled span is exported, so there is something to link to.
                sc = span.get_span_context()
                if sc.trace_flags.sampled:
                    job.run_context = _traceparent(sc)
            token = otel_context.attach(trace.set_span_in_context(span))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # the tracer's fault: the job runs untraced
            self._tracer_failed(exc)
            span = None
        if span is None:  # outside the handler: the run's errors chain no tracer error
            return await call_next()
        carry = child_contexts.set(_ALONE) if not child_contexts.get() else carry_to_child(_CHILD)
        try:
            return await call_next()
        except asyncio.CancelledError as exc:
            # Its timeout or cancel_job (the runner's message) failed the run; a stop
            # handing it back, or a lease lost, did not: that span keeps no error.
            if exc.args and exc.args[0] in FAILING_CANCELS:
                self._record_failure(span, job.id, exc)
            raise
        except BaseException as exc:  # every other way a run raises: its span says so
            self._record_failure(span, job.id, exc)
            raise
        finally:
            child_contexts.reset(carry)
            otel_context.detach(token)
            try:
                span.end()
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # never the run's outcome: it is decided
                self._tracer_failed(exc)

    def _record_failure(self, span: Any, job_id: str, exc: BaseException) -> None:
        """Mark the run's span as failed by ``exc``: status ERROR first (whatever the
        event costs, the span says the run failed), then the bounded ``exception``
        event. A tracer that raises here loses that span's record, never the run's own
        error (re-raised by the caller) nor the reason recorded on the job."""
        try:
            if not span.is_recording():
                return
            span.set_status(Status(StatusCode.ERROR, clip(safe_name(exc), MAX_ERROR_CHARS)))
            self._previous[job_id] = span.get_span_context()
            if len(self._previous) > _MAX_PENDING:
                self._previous.popitem(last=False)
            span.add_event("exception", _exception_attributes(exc))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as failed:  # the run's own error goes on, not the tracer's
            self._tracer_failed(failed)

    def _links(self, job: Any, remote: SpanContext | None) -> list[Link]:
        """A retry's links: the publish context, and the previous attempt's span when
        this process ran it."""
        links: list[Link] = []
        if remote is not None:
            links.append(Link(remote, {"kitium_queue.link": "enqueue"}))
        prev = self._previous.pop(job.id, None)
        if prev is not None:
            links.append(Link(prev, {"kitium_queue.link": "previous-attempt"}))
        return links
