"""The built-in lifecycle subscriber: ``queue.on(...)`` events, the metrics adapter, logs
and the DLQ notification handler, expressed on the lifecycle hooks (``hooks.py``).

Every queue has one ``Observer`` as its first subscriber. Within each hook it does what
the worker and the producer did inline before the hooks existed, in the same order, so
users see the same events, metrics, log lines and notifications:

============  ==================================================================
hook          what the Observer does
============  ==================================================================
enqueued      metric ``jobs.added``; event ``job-added`` per job
started       event ``job-started``; metrics ``jobs.started``, ``job.wait_ms``
progress      event ``job-progress``
finished      completed: event ``job-completed``; metrics ``jobs.completed``,
              ``job.duration_ms``.
              retrying: log (info); events ``job-failed`` (``final`` False),
              ``job-retrying``; metric ``jobs.retried``.
              failed: log (error); event ``job-failed`` (``final`` True, with the
              reason and traceback); metric ``jobs.failed``.
              deferred: event ``job-retrying`` (``attempt_spent`` False).
stalled       per job a log line (warning) and event ``job-stalled``; metric
              ``jobs.stalled``
dead_lettered a log line (error) when recovery dead-lettered it; metric
              ``jobs.dlq``; event ``job-dlq`` (with the reason, and the error and
              traceback when this process ran the job); ``dlq.notification_handler``
              in a task of its own
queue_error   event ``queue-error``
feature_event event named after the ``FeatureEvent`` (e.g. ``breaker-state``), its
              fields (and ``feature``, ``subject``, ``event_id``, ``at_ms``) in ``extra``
============  ==================================================================

Log lines keep the worker's logger name (``kitium_queue.worker``), as before.
Further subscribers (Prometheus, OpenTelemetry, webhooks, audit) are added after it.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from .events import EventData
from .hooks import FeatureEvent, Outcome, Subscriber
from .limits import get_logger, printable
from .middleware import FailureTextFilter
from .outcomes import describe, safe_name, traceback_text

if TYPE_CHECKING:
    from .adapters import MetricsAdapter
    from .events import EventEmitter

__all__ = ["Observer"]

log = get_logger("kitium_queue.worker")

#: At most one line per this many seconds about jobs dead-lettered on recovery.
RECOVERY_LOG_S = 30


def _rewritten(
    filters: Sequence[FailureTextFilter], job: Any, exc: BaseException | None, text: str
) -> bool:
    """Whether the failure-text filters rewrite this failure's stored texts: each filter
    that says so itself (``rewrites(job, exc)``) is asked, the others are run on the
    text and their answer compared (a filter that fails counts as rewriting)."""
    raw = text.encode("utf-8", "backslashreplace")
    for fn in filters:
        ask = getattr(fn, "rewrites", None)
        try:
            if ask(job, exc) if callable(ask) else fn(job, exc, raw, b"")[0] != raw:
                return True
        except Exception:  # as filter_failure_texts: a failing filter hides the texts
            return True
    return False


class Observer(Subscriber):
    """Events, metrics, logs and the DLQ notification of one queue.

    Args:
        queue: the queue name.
        emitter: the queue's ``EventEmitter`` (``queue.on``).
        metrics: the queue's metrics adapter, or None.
        dlq_handler: ``dlq.notification_handler``: called (awaited if it returns an
            awaitable) with the ``JobInfo`` of every job dead-lettered, or None.
        job_info: ``queue.get_job_status``, to fetch that ``JobInfo`` (needed with a
            ``dlq_handler``).
        text_filters: the queue's failure-text filters (``middleware.py``): the log
            lines of a failed run whose stored texts they rewrite name the error's type
            only, never its text.
    """

    def __init__(
        self,
        queue: str,
        emitter: EventEmitter,
        metrics: MetricsAdapter | None,
        *,
        dlq_handler: Callable[[Any], Any] | None = None,
        job_info: Callable[[str], Awaitable[Any]] | None = None,
        text_filters: Sequence[FailureTextFilter] = (),
    ) -> None:
        self.queue = queue
        self.text_filters = text_filters  # the queue's list: later additions count
        self.emitter = emitter
        self.metrics = metrics
        self.dlq_handler = dlq_handler
        self.job_info = job_info
        # The last final failure seen by ``finished`` (job, outcome, event details): the
        # worker reports ``dead_lettered`` for the same job right after it, and the
        # job-dlq event carries the same error and details.
        self._failure: tuple[Any, Outcome, dict[str, Any]] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Jobs dead-lettered on recovery: one line per RECOVERY_LOG_S, the rest counted
        # (evicted or deleted records are found by the thousand).
        self._recovered_at = -float(RECOVERY_LOG_S)
        self._recovered_more: list[str] = []

    def quiet_outcomes(self) -> str:
        """Outcome codes (``wire.Kind``) ``finished`` does nothing for right now: no
        listener for their event and no metrics adapter. The worker skips building the
        ``Outcome`` of those when no other subscriber wants ``finished``. Failures and
        retries are never quiet (they are logged). Called once per batch of outcomes,
        and again after ``finished`` calls before an outcome is skipped (a handler may
        add a listener)."""
        completed = self.metrics is None and not self.emitter.wants("job-completed")
        deferred = not self.emitter.wants("job-retrying")
        if completed:
            return "CDH" if deferred else "CH"
        return "DH" if deferred else "H"

    # ------------------------------------------------------------------ producer
    def enqueued(self, queue: str, job_ids: Sequence[str], names: Sequence[str]) -> None:
        if self.metrics is not None:
            # One increment per call: a batch of one name is tagged with it, a mixed
            # batch with "*".
            first = names[0] if names else "*"
            name = first if all(n == first for n in names) else "*"
            self.metrics.increment("jobs.added", len(job_ids), {"queue": queue, "job_name": name})
        if self.emitter.wants("job-added"):
            for job_id, job_name in zip(job_ids, names, strict=False):
                self.emitter.emit(EventData("job-added", queue, job_id, extra={"name": job_name}))

    # ------------------------------------------------------------------ worker
    def started(self, queue: str, job: Any) -> None:
        if self.emitter.wants("job-started"):
            self.emitter.emit(EventData("job-started", queue, job.id, job=job))
        metrics = self.metrics
        if metrics is not None:
            tags = {"queue": queue, "job_name": job.name}
            metrics.increment("jobs.started", 1, tags)
            # Enqueue time is Redis' clock, now is this host's: close, not exact.
            waited = max(0.0, time.time() * 1000 - job.created_at)
            metrics.observe("job.wait_ms", waited, tags)

    def progress(self, queue: str, job: Any, value: Any) -> None:
        if self.emitter.wants("job-progress"):
            self.emitter.emit(EventData("job-progress", queue, job.id, job=job, progress=value))

    def finished(self, queue: str, job: Any, outcome: Outcome) -> None:
        kind = outcome.kind
        if kind == "completed":  # the usual case, inline
            events = self.emitter
            if events.wants("job-completed"):
                events.emit(
                    EventData("job-completed", queue, job.id, job=job, result=outcome.result)
                )
            metrics = self.metrics
            if metrics is not None:
                tags = {"queue": queue, "job_name": job.name}
                metrics.increment("jobs.completed", 1, tags)
                took = outcome.duration_ms
                metrics.observe("job.duration_ms", took if took is not None else 0.0, tags)
        elif kind == "retrying":
            self._retrying(queue, job, outcome)
        elif kind == "failed":
            self._failed(queue, job, outcome)
        elif kind == "deferred" and self.emitter.wants("job-retrying"):
            self.emitter.emit(
                EventData(
                    "job-retrying",
                    queue,
                    job.id,
                    job=job,
                    error=outcome.error,
                    delay_ms=outcome.delay_ms,
                    extra={"attempt_spent": False},
                )
            )

    def _retrying(self, queue: str, job: Any, outcome: Outcome) -> None:
        exc = outcome.error
        log.info(
            "queue %s: job %s failed (attempt %d/%d), retrying in %d ms: %s",
            queue,
            printable(job.id),
            job.attempts,
            job.max_attempts,
            outcome.delay_ms,
            self._logged(job, exc),
        )
        events = self.emitter
        if events.wants("job-failed"):
            events.emit(
                EventData("job-failed", queue, job.id, job=job, error=exc, extra={"final": False})
            )
        if events.wants("job-retrying"):
            events.emit(
                EventData(
                    "job-retrying", queue, job.id, job=job, error=exc, delay_ms=outcome.delay_ms
                )
            )
        if self.metrics is not None:
            self.metrics.increment("jobs.retried", 1, {"queue": queue, "job_name": job.name})

    def _logged(self, job: Any, exc: BaseException | None) -> str:
        """The error as the worker's log lines name it: its text, or its type only when a
        failure-text filter rewrites what is stored for this job (sealed, masked)."""
        text = describe(exc)
        if self.text_filters and _rewritten(self.text_filters, job, exc, text):
            kind = "error" if exc is None else safe_name(exc)
            return f"{printable(kind)} (its text is withheld: a failure-text filter rewrites it)"
        return printable(text)

    def _failed(self, queue: str, job: Any, outcome: Outcome) -> None:
        exc = outcome.error
        log.error(
            "queue %s: job %s failed for good after %d attempt(s): %s",
            queue,
            printable(job.id),
            job.attempts,
            self._logged(job, exc),
        )
        events = self.emitter
        details: dict[str, Any] = {}
        if events.wants("job-failed") or events.wants("job-dlq"):
            details = _failure_details(outcome)
        self._failure = (job, outcome, details)
        if events.wants("job-failed"):
            events.emit(
                EventData(
                    "job-failed",
                    queue,
                    job.id,
                    job=job,
                    error=exc,
                    extra={"final": True, **details},
                )
            )
        if self.metrics is not None:
            self.metrics.increment("jobs.failed", 1, {"queue": queue, "job_name": job.name})

    def stalled(self, queue: str, job_ids: Sequence[str]) -> None:
        events = self.emitter
        if job_ids:  # one line per recovery, not per job (thousands after a long outage)
            shown = ", ".join(printable(j) for j in job_ids[:10])
            more = f" and {len(job_ids) - 10} more" if len(job_ids) > 10 else ""
            log.warning(
                "queue %s: %d job(s) stalled (lease expired); requeued: %s%s",
                queue, len(job_ids), shown, more,
            )  # fmt: skip
        for job_id in job_ids:
            if events.wants("job-stalled"):
                events.emit(EventData("job-stalled", queue, job_id))
        if self.metrics is not None and job_ids:
            self.metrics.increment("jobs.stalled", len(job_ids), {"queue": queue})

    def dead_lettered(self, queue: str, job_id: str, job: Any, reason: str | None) -> None:
        failure, self._failure = self._failure, None
        error: BaseException | None = None
        extra: dict[str, Any] = {}
        if job is not None and failure is not None and failure[0] is job:
            error, extra = failure[1].error, failure[2]
        elif reason is not None:
            extra = {"reason": reason}
        if job is None:
            self._recovered(queue, job_id)
        if self.metrics is not None:
            tags = {"queue": queue} if job is None else {"queue": queue, "job_name": job.name}
            self.metrics.increment("jobs.dlq", 1, tags)
        if self.emitter.wants("job-dlq"):
            self.emitter.emit(
                EventData("job-dlq", queue, job_id, job=job, error=error, extra=extra)
            )
        if self.dlq_handler is not None and self.job_info is not None:
            task = asyncio.get_running_loop().create_task(
                self._notify(self.dlq_handler, self.job_info, job_id)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _recovered(self, queue: str, job_id: str) -> None:
        """Say a job dead-lettered on recovery: the first one of each ``RECOVERY_LOG_S``
        at once, the others in the next line (how many, the first ids)."""
        now = time.monotonic()
        if now - self._recovered_at < RECOVERY_LOG_S:
            if not self._recovered_more:  # said once the window ends, if nothing else does
                later = RECOVERY_LOG_S - (now - self._recovered_at)
                asyncio.get_running_loop().call_later(later, self._recovered_flush, queue)
            self._recovered_more.append(job_id)
            return
        self._recovered_log(queue, [*self._recovered_more, job_id], now)

    def _recovered_flush(self, queue: str) -> None:
        if self._recovered_more:
            self._recovered_log(queue, self._recovered_more, time.monotonic())

    def _recovered_log(self, queue: str, job_ids: list[str], now: float) -> None:
        self._recovered_more, self._recovered_at = [], now
        ids = [printable(j) for j in job_ids]
        log.error(
            "queue %s: %d job(s) dead-lettered on recovery (%s%s): stalled too often, "
            "cancelled while their worker was gone, or their record missing (deleted or "
            "evicted; counted in get_stats().missing_records); each one's failed_reason says "
            "which. Said at most every %d s",
            queue,
            len(ids),
            ", ".join(ids[:10]),
            f" and {len(ids) - 10} more" if len(ids) > 10 else "",
            RECOVERY_LOG_S,
        )

    def queue_error(self, queue: str, error: BaseException) -> None:
        if self.emitter.wants("queue-error"):
            self.emitter.emit(EventData("queue-error", queue, error=error))

    def feature_event(self, event: FeatureEvent) -> None:
        if self.emitter.wants(event.name):
            extra: dict[str, Any] = {
                **event.fields,
                "feature": event.feature,
                "subject": event.subject,
                "event_id": event.event_id,
                "at_ms": event.at_ms,
            }
            self.emitter.emit(EventData(event.name, event.queue, extra=extra))

    @staticmethod
    async def _notify(
        handler: Callable[[Any], Any], job_info: Callable[[str], Awaitable[Any]], job_id: str
    ) -> None:
        try:
            info = await job_info(job_id)
            out = handler(info)
            if inspect.isawaitable(out):
                await out
        except Exception:
            log.exception("dlq.notification_handler failed for job %s", printable(job_id))


def _failure_details(outcome: Outcome) -> dict[str, Any]:
    """``reason`` and, when the error carries one, ``traceback`` of a final failure, as
    recorded on the job."""
    details: dict[str, Any] = {"reason": outcome.reason}
    exc = outcome.error
    if exc is not None and exc.__traceback__ is not None:
        details["traceback"] = traceback_text(exc).decode("utf-8", "replace")
    return details
