"""The Prometheus lifecycle subscriber: counters and histograms of what this process saw.

``PrometheusSubscriber`` is a ``hooks.Subscriber``: subscribe it on every queue whose
jobs this process adds or runs (``queue.subscribe(sub)``, or let ``PrometheusExporter``
do it). It counts in the process that saw the transition, as every lifecycle hook does:
a worker counts what it ran, a producer what it added. The per-state gauges, read from
Redis by any process, are the collector's (``collector.py``).

Labels are ``queue`` and ``job_name``. Job names come from whoever adds jobs, so their
number is capped: the first ``max_job_names`` distinct names (per subscriber) get their
own label value, every later one is counted under ``other``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from ...hooks import Outcome, Subscriber
from ...limits import get_logger

__all__ = ["DEFAULT_BUCKETS", "OTHER", "PrometheusSubscriber"]

log = get_logger(__name__)

#: The label value of job names beyond the cap.
OTHER = "other"
#: Histogram buckets (seconds) of processing duration and queue wait.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 3600.0,
)


class PrometheusSubscriber(Subscriber):
    """Counts jobs added, processed, failed, retried, dead-lettered and stalled, and
    observes processing duration and queue wait (metric names: docs/observability.md).

    Args:
        registry: the ``CollectorRegistry`` the metrics are registered in (a new one
            when None; ``prometheus_client.REGISTRY`` to use the global one).
        namespace: prefix of every metric name.
        max_job_names: distinct ``job_name`` label values kept before ``other`` is used
            (1..10,000).
        buckets: histogram bucket bounds, in seconds.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        namespace: str = "kitium_queue",
        max_job_names: int = 100,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        if not isinstance(max_job_names, int) or not 1 <= max_job_names <= 10_000:
            raise ValueError(f"max_job_names must be an int in 1..10000, got {max_job_names!r}")
        self.registry = registry if registry is not None else CollectorRegistry()
        self.max_job_names = max_job_names
        self._names: set[str] = set()
        labels = ("queue", "job_name")
        reg, ns = self.registry, namespace

        def counter(name: str, doc: str, names: Sequence[str] = labels) -> Counter:
            return Counter(name, doc, names, namespace=ns, registry=reg)

        self.added = counter("jobs_added", "Jobs added by this process.")
        self.processed = counter("jobs_processed", "Runs that completed their job.")
        self.failed = counter("jobs_failed", "Jobs that failed for good (no attempt left).")
        self.retried = counter("jobs_retried", "Failed runs that will be retried.")
        self.dead_letters = counter(
            "jobs_dead_lettered", "Jobs moved to the dead-letter queue.")
        self.stalled_jobs = counter(
            "jobs_stalled", "Runs whose lease expired (requeued or dead-lettered).", ("queue",))
        self.duration = Histogram(
            "job_duration_seconds", "Time a processor ran, per run.", labels,
            namespace=ns, registry=reg, buckets=tuple(buckets))
        self.wait = Histogram(
            "job_wait_seconds", "Time from enqueue to the start of the first run.", labels,
            namespace=ns, registry=reg, buckets=tuple(buckets))
        # (metric id, queue, label) -> child: labels() takes a lock and builds a tuple,
        # too slow for once per job.
        self._children: dict[tuple[int, str, str], Any] = {}

    def job_label(self, name: str) -> str:
        """The ``job_name`` label value of ``name``: itself while under the cap, else
        ``other``."""
        names = self._names
        if name in names or name == OTHER:
            return name
        if len(names) < self.max_job_names:
            names.add(name)
            return name
        return OTHER

    def _child(self, metric: Any, queue: str, name: str) -> Any:
        key = (id(metric), queue, name)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(queue, self.job_label(name))
        return child

    def quiet_outcomes(self) -> str:
        """Deferred and handed-back runs are not counted (``hooks.Subscriber.finished``)."""
        return "DH"

    # ------------------------------------------------------------------ hooks
    def enqueued(self, queue: str, job_ids: Sequence[str], names: Sequence[str]) -> None:
        for name in names:
            self._child(self.added, queue, name).inc()

    def started(self, queue: str, job: Any) -> None:
        if job.attempts == 1:
            # Enqueue time is Redis' clock, now is this host's: close, not exact.
            waited = max(0.0, time.time() - job.created_at / 1000)
            self._child(self.wait, queue, job.name).observe(waited)

    def finished(self, queue: str, job: Any, outcome: Outcome) -> None:
        kind = outcome.kind
        if kind == "completed":
            self._child(self.processed, queue, job.name).inc()
        elif kind == "retrying":
            self._child(self.retried, queue, job.name).inc()
        elif kind == "failed":
            self._child(self.failed, queue, job.name).inc()
        else:
            return
        took = outcome.duration_ms
        if took is not None:
            self._child(self.duration, queue, job.name).observe(took / 1000)

    def stalled(self, queue: str, job_ids: Sequence[str]) -> None:
        if job_ids:
            self.stalled_jobs.labels(queue).inc(len(job_ids))

    def dead_lettered(self, queue: str, job_id: str, job: Any, reason: str | None) -> None:
        # Recovery dead-letters by id only: no name known, counted under "other".
        self._child(self.dead_letters, queue, job.name if job is not None else OTHER).inc()
