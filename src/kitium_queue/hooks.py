"""Lifecycle hooks: one typed protocol for everything that watches jobs (DESIGN §5.3).

A *subscriber* is an object with any of the methods of ``Subscriber``; the queue calls
them as jobs move: ``enqueued``, ``duplicate`` (an add that found its job there already),
``started``, ``progress``, ``finished`` (with the
``Outcome``: completed, retrying, failed for good, deferred, released), ``stalled``,
``dead_lettered``, ``removed``, ``admin`` (every administrative command, with its result
or error), ``queue_error`` and ``feature_event`` (something a feature reports that is not
a job's transition, e.g. a circuit breaker changing state: a ``FeatureEvent``). The
built-in ``queue.on(...)`` events, the metrics adapter, the logs and the DLQ
notification handler are subscribers (``observe.py``); Prometheus, OpenTelemetry,
webhooks and audit are each one more.

Rules a subscriber can rely on:

* Calls happen in the process that saw the transition, *after* Redis recorded it (a
  ``finished`` call means the outcome is durable), in the order subscribers were added.
* Methods are plain functions called on the event loop: keep them short and do I/O in a
  task of your own. A subscriber that raises is logged and skipped; it never changes the
  job's outcome and never stops the other subscribers. That holds for whatever it
  raises, a ``BaseException`` subclass or a ``CancelledError`` too (raised by a plain
  function, it is its own, not a cancellation of the caller); only
  ``KeyboardInterrupt`` and ``SystemExit`` go on.
* Hooks are plain functions: a subscriber with an ``async def`` hook is refused by
  ``add`` (``TypeError`` naming the hook), rather than having its coroutines created and
  never run. Start a task of your own from a plain hook instead.
* A method a subscriber does not override costs nothing: ``HookBus`` keeps, per hook,
  the tuple of subscribers that override it, and callers skip a hook whose tuple is
  empty (``if bus.started: bus.emit_started(job)``).

Subscribers only watch. One hook may decide instead: a *duplicate check*
(``DuplicateCheck``, ``bus.add_duplicate_check``) looks at an add that found its job
there already (the enqueue script's ``dup``: nothing written) before the add returns
that job's id, and may refuse the add (``dupcheck.py`` reads what it compares). With
none registered, or none that ``wants`` the add's options, a duplicate costs nothing
more; an add that wrote its job is never looked at.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .limits import get_logger

__all__ = [
    "HOOK_NAMES",
    "AdminCall",
    "DuplicateCheck",
    "FeatureEvent",
    "FoundDuplicate",
    "HookBus",
    "Outcome",
    "OutcomeKind",
    "Subscriber",
]

log = get_logger(__name__)

#: What a subscriber may raise that is not contained: the process is being stopped.
_PASSED_ON = (KeyboardInterrupt, SystemExit)

OutcomeKind = Literal["completed", "retrying", "failed", "deferred", "released"]


@dataclass(slots=True)
class Outcome:
    """How one run of a job ended, as recorded in Redis.

    Attributes:
        kind: ``completed``; ``retrying`` (failed, will run again after ``delay_ms``);
            ``failed`` (for good: dead-lettered when the DLQ is enabled); ``deferred``
            (``RetryLater``/``RateLimited``: back after ``delay_ms``, no attempt spent);
            ``released`` (handed back unstarted or interrupted by shutdown).
        result: the processor's return value (``completed``).
        error: the exception (``retrying``, ``failed``, ``deferred``), if any.
        reason: the recorded reason text (``retrying``, ``failed``, ``deferred``).
        delay_ms: delay before the job runs again (``retrying``, ``deferred``).
        duration_ms: how long the processor ran, when it ran.

    Treat it as read-only. It is a plain (not frozen) dataclass because one is built per
    recorded outcome on the worker's hot path, and a frozen one costs several times more
    to build.
    """

    kind: OutcomeKind
    result: Any = None
    error: BaseException | None = None
    reason: str | None = None
    delay_ms: int | None = None
    duration_ms: float | None = None

    @property
    def final(self) -> bool:
        """True when the job will not run again by itself (completed or failed)."""
        return self.kind in ("completed", "failed")


@dataclass(frozen=True, slots=True)
class AdminCall:
    """An administrative command that passed the admin choke point.

    Attributes:
        queue: queue name.
        command: the method name (``pause``, ``retry_job``, ``clear``, ...).
        args: its arguments (ids, limits, flags; never job payloads).
        result: what it returned, when it succeeded.
        error: the exception it raised, when it failed.
        principal: who ran it (``identity.current_principal``, else the queue's
            default principal; None when nobody was named).
    """

    queue: str
    command: str
    args: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    error: BaseException | None = None
    principal: str | None = None


@dataclass(frozen=True, slots=True)
class FeatureEvent:
    """Something a feature reports that is not one job's transition.

    Attributes:
        queue: queue name.
        feature: the feature reporting it (e.g. ``circuit-breakers``).
        name: the event's name (e.g. ``breaker-state``); ``queue.on(name, ...)``
            handlers receive it too, as ``EventData`` with these ``fields`` in ``extra``.
        subject: what it is about (e.g. the breaker's id).
        fields: the event's details as text (no payloads, no secrets).
        event_id: a stable id of the event (e.g. the stream entry it was read from), for
            receivers that deduplicate; features report at least once.
        at_ms: when it happened (ms since the epoch, Redis clock).
    """

    queue: str
    feature: str
    name: str
    subject: str
    fields: dict[str, str] = field(default_factory=dict)
    event_id: str = ""
    at_ms: int = 0


@dataclass(frozen=True, slots=True)
class FoundDuplicate:
    """An add that found its job there already, as a ``DuplicateCheck`` sees it: what
    the add asked for and the job it found, read one round trip after the enqueue
    script answered (``dupcheck.py``).

    Attributes:
        queue: queue name.
        job_id: the id of the job found (the id the add would return).
        name: the job name the add asked for.
        idempotency_key: the add's idempotency key (``""``: none).
        chosen_id: the add's ``job_id`` (``""``: an automatic id).
        options: the add's options over the queue's ``default_job_options``.
        readable: whether both payloads below could be read. False when the job's
            record is gone (removed, while its key's or id's window still holds), its
            data does not decode, or a payload view hides a value it cannot open here
            (a key this process does not hold): then there is nothing to compare.
        data: the add's data, encoded as the add would store it, decoded again and
            through the payload views (None when not ``readable``).
        found_data: the job's stored data, decoded and through the payload views (None
            when not ``readable``).
        found_name: the stored job's name (None when its record is gone).
    """

    queue: str
    job_id: str
    name: str
    idempotency_key: str
    chosen_id: str
    options: Mapping[str, Any]
    readable: bool
    data: Any = None
    found_data: Any = None
    found_name: str | None = None


class DuplicateCheck:
    """Base class of duplicate checks (``HookBus.add_duplicate_check``): decides whether
    an add that found its job there already returns that job's id (as it does without
    a check) or is refused. Both methods are plain, quick functions. One that raises
    refuses that add as a refusal would (nothing of it was written; the reason names
    the check and the error's type, which is logged, not its message): the other jobs
    of an ``add_jobs``, written or found, stand and are reported as usual."""

    def wants(self, options: Mapping[str, Any]) -> bool:
        """Whether an add with ``options`` (over the queue's ``default_job_options``)
        is to be checked when it finds its job there; only then is the job read."""
        return False

    def check(self, found: FoundDuplicate) -> str | None:
        """None: the add returns the existing id. Else the reason the add is refused
        (a plain text, or ``"<CODE>\\t<field>...\\t<message>"`` with a code of
        ``errors.REFUSAL_ERRORS``): ``add_job`` raises that code's error,
        ``add_jobs`` refuses that job as a feature's refusal (``JobRefusedError``)."""
        return None


class Subscriber:
    """Base class of lifecycle subscribers: override the hooks you need.

    Every method is optional and a no-op here. ``job`` is the ``Job`` a worker runs
    (``started``, ``progress``, ``finished``) or, where only the id is known, None.
    """

    def enqueued(self, queue: str, job_ids: Sequence[str], names: Sequence[str]) -> None:
        """Jobs were added (``job_ids[i]`` has name ``names[i]``). Adds that found their
        job there already are not among them: see ``duplicate``."""

    def duplicate(self, queue: str, job_ids: Sequence[str], names: Sequence[str]) -> None:
        """Adds that wrote nothing because their job exists already (the same
        ``job_id``, or an idempotency key whose window is open): ``job_ids[i]`` is the
        existing job's id, ``names[i]`` the name the add asked for. A feature acting on
        the existing job (a debounce) reports through this hook too."""

    def started(self, queue: str, job: Any) -> None:
        """A worker started running ``job``."""

    def progress(self, queue: str, job: Any, value: Any) -> None:
        """``job`` reported progress ``value`` (already stored)."""

    def finished(self, queue: str, job: Any, outcome: Outcome) -> None:
        """The outcome of one run of ``job`` was recorded.

        Optional companion: ``quiet_outcomes() -> str``, the outcome codes
        (``wire.Kind``: ``"C"``, ``"D"``, ``"H"``, ...) this subscriber currently ignores.
        When every ``finished`` subscriber says a code is quiet, the worker does not even
        build the ``Outcome`` for it. It is asked once per batch of outcomes, and again
        before an outcome would be skipped when a ``finished`` call was made since it
        was last asked (so an answer changed by that call counts from the next
        outcome on); a final failure is always reported.
        """

    def stalled(self, queue: str, job_ids: Sequence[str]) -> None:
        """Leases of these jobs expired; they went back to wait."""

    def dead_lettered(self, queue: str, job_id: str, job: Any, reason: str | None) -> None:
        """A job reached the dead-letter queue (final failure, stalls, bad payload)."""

    def removed(self, queue: str, job_id: str) -> None:
        """A job was removed by ``remove_job``."""

    def admin(self, call: AdminCall) -> None:
        """An administrative command ran (or failed)."""

    def queue_error(self, queue: str, error: BaseException) -> None:
        """A queue-level error: Redis unreachable, a claim or finish round refused."""

    def feature_event(self, event: FeatureEvent) -> None:
        """A feature reported ``event`` (which process reports it: the feature's docs)."""


#: Every hook of ``Subscriber``, in the order they are documented.
HOOK_NAMES = (
    "enqueued",
    "duplicate",
    "started",
    "progress",
    "finished",
    "stalled",
    "dead_lettered",
    "removed",
    "admin",
    "queue_error",
    "feature_event",
)


class HookBus:
    """The subscribers of one queue, indexed per hook.

    ``bus.<hook>`` is the tuple of bound methods of the subscribers that override that
    hook (empty when none does: test it before building the arguments), and
    ``bus.emit_<hook>(...)`` calls them in order, logging and skipping one that raises.
    """

    def __init__(self) -> None:
        self._subs: list[Any] = []
        #: The duplicate checks, in the order added (``add_duplicate_check``).
        self.duplicate_checks: tuple[DuplicateCheck, ...] = ()
        self._index()

    def add_duplicate_check(self, check: DuplicateCheck) -> None:
        """Add a duplicate check (``DuplicateCheck``); adding it twice is a no-op. The
        first check that refuses an add decides."""
        if not callable(getattr(check, "wants", None)) or not callable(
            getattr(check, "check", None)
        ):
            raise TypeError(f"{check!r} is not a duplicate check (wants and check methods)")
        if not any(c is check for c in self.duplicate_checks):
            self.duplicate_checks = (*self.duplicate_checks, check)

    def remove_duplicate_check(self, check: DuplicateCheck) -> None:
        self.duplicate_checks = tuple(c for c in self.duplicate_checks if c is not check)

    @property
    def subscribers(self) -> tuple[Any, ...]:
        return tuple(self._subs)

    def add(self, subscriber: Any) -> None:
        """Add a subscriber (called after those added before it). Adding twice is a no-op.
        ``TypeError`` for an object with none of the hooks, or with an ``async def``
        hook (hooks are called, never awaited: its body would never run)."""
        if any(s is subscriber for s in self._subs):
            return
        if not any(callable(getattr(subscriber, h, None)) for h in HOOK_NAMES):
            raise TypeError(
                f"{subscriber!r} has none of the lifecycle hooks {', '.join(HOOK_NAMES)}"
            )
        for hook in HOOK_NAMES:
            fn = getattr(subscriber, hook, None)
            if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
                getattr(fn, "__call__", None)  # noqa: B004
            ):
                raise TypeError(
                    f"lifecycle subscriber {type(subscriber).__qualname__}: its hook "
                    f"{hook!r} is an async def, but hooks are plain functions called on "
                    "the event loop and never awaited (its body would never run); make it "
                    "a plain def and start a task of your own for I/O"
                )
        self._subs.append(subscriber)
        self._index()

    def remove(self, subscriber: Any) -> None:
        self._subs = [s for s in self._subs if s is not subscriber]
        self._index()

    def _index(self) -> None:
        for hook in HOOK_NAMES:
            base = getattr(Subscriber, hook)
            found: list[Callable[..., None]] = []
            for s in self._subs:
                fn = getattr(s, hook, None)
                if fn is None or not callable(fn):
                    continue
                # A Subscriber subclass that leaves the hook as inherited does not count.
                if getattr(type(s), hook, None) is base:
                    continue
                found.append(fn)
            setattr(self, hook, tuple(found))

    # The hook tuples, set by _index (declared for type checkers).
    enqueued: tuple[Callable[..., None], ...]
    duplicate: tuple[Callable[..., None], ...]
    started: tuple[Callable[..., None], ...]
    progress: tuple[Callable[..., None], ...]
    finished: tuple[Callable[..., None], ...]
    stalled: tuple[Callable[..., None], ...]
    dead_lettered: tuple[Callable[..., None], ...]
    removed: tuple[Callable[..., None], ...]
    admin: tuple[Callable[..., None], ...]
    queue_error: tuple[Callable[..., None], ...]
    feature_event: tuple[Callable[..., None], ...]

    # Each emit_* loops inline (no shared helper): it runs once per job on the hot path.
    def emit_enqueued(self, queue: str, job_ids: Sequence[str], names: Sequence[str]) -> None:
        for fn in self.enqueued:
            try:
                fn(queue, job_ids, names)
            except _PASSED_ON:
                raise
            except BaseException:
                log.exception("lifecycle subscriber %r failed in enqueued", fn)

    def emit_duplicate(self, queue: str, job_ids: Sequence[str], names: Sequence[str]) -> None:
        for fn in self.duplicate:
            try:
                fn(queue, job_ids, names)
            except _PASSED_ON:
                raise
            except BaseException:
                log.exception("lifecycle subscriber %r failed in duplicate", fn)

    def emit_started(self, queue: str, job: Any) -> None:
        for fn in self.started:
            try:
                fn(queue, job)
            except _PASSED_ON:
                raise
            except BaseException:
                log.exception("lifecycle subscriber %r failed in started", fn)

    def emit_progress(self, queue: str, job: Any, value: Any) -> None:
        for fn in self.progress:
            try:
                fn(queue, job, value)
            except _PASSED_ON:
                raise
            except BaseException:
                log.exception("lifecycle subscriber %r failed in progress", fn)

    def emit_finished(self, queue: str, job: Any, outcome: Outcome) -> None:
        for fn in self.finished:
            try:
                fn(queue, job, outcome)
            except _PASSED_ON:
                raise
            except BaseException:
                log.exception("lifecycle subscriber %r failed in finished", fn)

    def emit_stalled(self, queue: str, job_ids: Sequence[str]) -> None:
        for fn in self.stalled:
            try:
                fn(queue, job_ids)
            except _PASSED_ON:
                raise
            except BaseException:
                log.exception("lifecycle subscriber %r failed in stalled", fn)

    def emit_dead_lettered(self, queue: str, job_id: str, job: Any, reason: str | None) -> None:
        for fn in self.dead_lettered:
            try:
                fn(queue, job_id, job, reason)
            except _PASSED_ON:
                raise
            except BaseException:
                log.exception("lifecycle subscriber %r failed in dead_lettered", fn)

    def emit_removed(self, queue: str, job_id: str) -> None:
        for fn in self.removed:
            try:
                fn(queue, job_id)
            except _PASSED_ON:
                raise
            except BaseException:
                log.exception("lifecycle subscriber %r failed in removed", fn)

    def emit_admin(self, call: AdminCall) -> None:
        for fn in self.admin:
            try:
                fn(call)
            except _PASSED_ON:
                raise
            except BaseException:
                log.exception("lifecycle subscriber %r failed in admin", fn)

    def emit_queue_error(self, queue: str, error: BaseException) -> None:
        for fn in self.queue_error:
            try:
                fn(queue, error)
            except _PASSED_ON:
                raise
            except BaseException:
                log.exception("lifecycle subscriber %r failed in queue_error", fn)

    def emit_feature_event(self, event: FeatureEvent) -> None:
        for fn in self.feature_event:
            try:
                fn(event)
            except _PASSED_ON:
                raise
            except BaseException:
                log.exception("lifecycle subscriber %r failed in feature_event", fn)
