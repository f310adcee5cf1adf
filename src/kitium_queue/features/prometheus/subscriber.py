"""The Prometheus lifecycle subscriber: counters and histograms of what this process saw.

``PrometheusSubscriber`` is a ``hooks.Subscriber``: subscribe it on every queue whose
jobs this process adds or runs (``queue.subscribe(sub)``, or let ``PrometheusExporter``
do it). It counts in the process that saw the transition, as every lifecycle hook does:
a worker counts what it ran, a producer what it added. The per-state gauges, read from
Redis by any process, are the collector's (``collector.py``).

Labels are ``queue`` and ``job_name`` (``LABELS`` lists the exceptions). Job names come
from whoever adds jobs, so their number is capped: the first ``max_job_names`` distinct
names (per subscriber) get their own label value, every later one is counted under
``other``; webhook and breaker ids have a cap of their own of the same size.

Besides the jobs' transitions it counts adds that found their job there already
(``duplicate``: idempotency hits) and three features' reports (``feature_event``): the
lag of each schedule tick, each webhook delivery result and each breaker transition.

It is also a ``prometheus_client`` collector (registered in the registry it is given):
the hooks run once per job on the worker's event loop, so they add to plain numbers
(no lock, no per-sample object), and the counter and histogram families are built from
them when the registry is scraped. The numbers of one (queue, job name) pair live in
one ``_Series``, bound the first time the pair is seen and found again by two dict
lookups (queue, then name): a job's hooks build no key and no label. Reads from a
scraping thread may see one job's counter before its histogram sample: each value is
exact, the set is a moment apart.
"""

from __future__ import annotations

import bisect
import math
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ...errors import ConfigurationError
from ...hooks import FeatureEvent, Outcome, Subscriber
from ...limits import get_logger

__all__ = [
    "BREAKER_STATE_EVENT",
    "COUNTERS",
    "DEFAULT_BUCKETS",
    "HISTOGRAMS",
    "LABELS",
    "OTHER",
    "SCHEDULE_LAG_EVENT",
    "WEBHOOK_DELIVERY_EVENT",
    "PrometheusSubscriber",
]

log = get_logger(__name__)

_NAMESPACE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def check_namespace(namespace: Any) -> str:
    """A metric name prefix (``ConfigurationError`` when Prometheus would refuse it at
    every scrape)."""
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
        raise ConfigurationError(
            "namespace must be a Prometheus metric name prefix (letters, digits, '_' and "
            f"':', not starting with a digit), got {namespace!r:.60}"
        )
    return namespace


#: The label value of job names beyond the cap.
OTHER = "other"
#: Histogram buckets (seconds) of processing duration and queue wait.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
)
#: Counter name (without namespace and ``_total``) -> help text.
COUNTERS: dict[str, str] = {
    "jobs_added": "Jobs added by this process.",
    "idempotency_hits": "Adds that found their job there already (same job_id or "
    "idempotency key): nothing was written.",
    "jobs_processed": "Runs that completed their job.",
    "jobs_failed": "Jobs that failed for good (no attempt left).",
    "jobs_retried": "Failed runs that will be retried.",
    "jobs_dead_lettered": "Jobs moved to the dead-letter queue.",
    "jobs_stalled": "Runs whose lease expired (requeued or dead-lettered); label queue only.",
    "webhook_deliveries": "Webhook delivery results recorded by this process, by outcome "
    "(delivered, retrying, dead-lettered, failed).",
    "breaker_transitions": "Circuit breaker state changes reported by this process (the "
    "breakers' leader).",
}
#: Histogram name (without namespace) -> help text.
HISTOGRAMS: dict[str, str] = {
    "job_duration_seconds": "Time a processor ran, per run.",
    "job_wait_seconds": "Time from enqueue to the start of the first run.",
    "schedule_lag_seconds": "How late the schedulers of this process enqueued each tick "
    "(fire time minus tick time).",
}
#: The label names of each metric (the ones not listed: queue and job_name).
LABELS: dict[str, tuple[str, ...]] = {
    "jobs_stalled": ("queue",),
    "webhook_deliveries": ("queue", "webhook", "outcome"),
    "breaker_transitions": ("queue", "breaker", "state"),
    "schedule_lag_seconds": ("queue",),
}
#: The features' events counted here (their names as the features define them:
#: ``features/scheduler.py`` LAG_EVENT, ``features/webhooks`` DELIVERY_EVENT,
#: ``features/breakers/events.py`` EVENT_NAME; a test keeps them in step).
SCHEDULE_LAG_EVENT = "schedule-lag"
WEBHOOK_DELIVERY_EVENT = "webhook-delivery"
BREAKER_STATE_EVENT = "breaker-state"
#: Outcomes of a webhook delivery (anything else is counted as ``other``).
DELIVERY_OUTCOMES = frozenset({"delivered", "retrying", "dead-lettered", "failed"})


class _Hist:
    """One histogram series: per-bucket counts (the last is +Inf) and the sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value


class _Series:
    """The counters and histograms labelled with one (queue, job_name) pair."""

    __slots__ = ("added", "dead", "duration", "failed", "hits", "processed", "retried", "wait")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.added = self.hits = self.processed = self.retried = self.failed = self.dead = 0
        self.duration = _Hist(bounds)
        self.wait = _Hist(bounds)


#: The metrics kept per (queue, job_name) in a ``_Series``: metric name -> attribute.
SERIES_METRICS: dict[str, str] = {
    "jobs_added": "added",
    "idempotency_hits": "hits",
    "jobs_processed": "processed",
    "jobs_failed": "failed",
    "jobs_retried": "retried",
    "jobs_dead_lettered": "dead",
    "job_duration_seconds": "duration",
    "job_wait_seconds": "wait",
}


class PrometheusSubscriber(Subscriber, Collector):
    """Counts jobs added, processed, failed, retried, dead-lettered and stalled, and
    observes processing duration and queue wait (metric names: docs/observability.md).

    Args:
        registry: the ``CollectorRegistry`` it registers in (a new one when None;
            ``prometheus_client.REGISTRY`` for the global one).
        namespace: prefix of every metric name.
        max_job_names: distinct ``job_name`` label values kept before ``other`` is used
            (1..10,000).
        buckets: histogram bucket upper bounds, in seconds, increasing.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        namespace: str = "kitium_queue",
        max_job_names: int = 100,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        if (
            isinstance(max_job_names, bool)
            or not isinstance(max_job_names, int)
            or not 1 <= max_job_names <= 10_000
        ):
            raise ConfigurationError(
                f"max_job_names must be an int in 1..10000, got {max_job_names!r:.40}"
            )
        if isinstance(buckets, (str, bytes)) or not all(
            isinstance(b, (int, float)) and not isinstance(b, bool) for b in buckets
        ):
            raise ConfigurationError(f"buckets must be numbers of seconds, got {buckets!r:.80}")
        bounds = tuple(float(b) for b in buckets)
        if (
            not bounds
            or not all(math.isfinite(b) for b in bounds)
            or list(bounds) != sorted(set(bounds))
        ):
            raise ConfigurationError(
                "buckets must be finite, increasing and not empty (+Inf is added), got "
                f"{buckets!r:.80}"
            )
        self.namespace = check_namespace(namespace)
        self.max_job_names = max_job_names
        self.buckets = bounds
        self._labels: dict[str, str] = {}
        self._subjects: dict[str, str] = {}
        # queue -> job name -> its series; a name past the cap is not a key here (it
        # finds the ``other`` series through job_label every time: bounded memory).
        self._series: dict[str, dict[str, _Series]] = {}
        # The metrics not kept per (queue, job_name): label values -> value.
        self._counters: dict[str, dict[tuple[str, ...], float]] = {
            k: {} for k in COUNTERS if k not in SERIES_METRICS
        }
        self._hists: dict[str, dict[tuple[str, ...], _Hist]] = {
            k: {} for k in HISTOGRAMS if k not in SERIES_METRICS
        }
        self._stalled, self._lag = (
            self._counters["jobs_stalled"],
            self._hists["schedule_lag_seconds"],
        )
        self._deliveries = self._counters["webhook_deliveries"]
        self._transitions = self._counters["breaker_transitions"]
        self.registry = registry if registry is not None else CollectorRegistry()
        self.registry.register(self)

    def job_label(self, name: str) -> str:
        """The ``job_name`` label value of ``name``: itself while under the cap, else
        ``other``."""
        got = self._labels.get(name)
        if got is None:
            if name == OTHER or len(self._labels) < self.max_job_names:
                got = name
                self._labels[name] = name
            else:
                got = OTHER
        return got

    def subject_label(self, subject: str) -> str:
        """The label value of a feature's subject (a webhook or breaker id): itself for
        the first ``max_job_names`` distinct ones, then ``other``."""
        got = self._subjects.get(subject)
        if got is None:
            if subject == OTHER or len(self._subjects) < self.max_job_names:
                got = self._subjects[subject] = subject
            else:
                got = OTHER
        return got

    def _bound(self, queue: str, name: str) -> _Series:
        """The series of ``queue`` and job name ``name`` (its label, capped)."""
        names = self._series.get(queue)
        if names is None:
            names = self._series[queue] = {}
        else:
            got = names.get(name)
            if got is not None:
                return got
        label = self.job_label(name)
        series = names.get(label)
        if series is None:
            series = names[label] = _Series(self.buckets)
        return series

    def quiet_outcomes(self) -> str:
        """Deferred and handed-back runs are not counted (``hooks.Subscriber.finished``)."""
        return "DH"

    # ------------------------------------------------------------------ hooks
    def enqueued(self, queue: str, job_ids: Sequence[str], names: Sequence[str]) -> None:
        known = self._series.get(queue) or {}
        for name in names:
            series = known.get(name) or self._bound(queue, name)
            series.added += 1

    def started(self, queue: str, job: Any) -> None:
        if job.attempts == 1:
            names = self._series.get(queue)
            series = names.get(job.name) if names is not None else None
            if series is None:
                series = self._bound(queue, job.name)
            # Enqueue time is Redis' clock, now is this host's: close, not exact.
            waited = time.time() - job.created_at / 1000
            series.wait.observe(waited if waited > 0.0 else 0.0)

    def finished(self, queue: str, job: Any, outcome: Outcome) -> None:
        names = self._series.get(queue)
        series = names.get(job.name) if names is not None else None
        if series is None:
            series = self._bound(queue, job.name)
        kind = outcome.kind
        if kind == "completed":
            series.processed += 1
        elif kind == "retrying":
            series.retried += 1
        elif kind == "failed":
            series.failed += 1
        else:
            return
        took = outcome.duration_ms
        if took is not None:
            series.duration.observe(took / 1000)

    def stalled(self, queue: str, job_ids: Sequence[str]) -> None:
        if job_ids:
            key = (queue,)
            self._stalled[key] = self._stalled.get(key, 0) + len(job_ids)

    def dead_lettered(self, queue: str, job_id: str, job: Any, reason: str | None) -> None:
        # Recovery dead-letters by id only: no name known, counted under "other".
        self._bound(queue, job.name if job is not None else OTHER).dead += 1

    def duplicate(self, queue: str, job_ids: Sequence[str], names: Sequence[str]) -> None:
        for name in names:
            self._bound(queue, name).hits += 1

    def feature_event(self, event: FeatureEvent) -> None:
        name, f = event.name, event.fields
        if name == SCHEDULE_LAG_EVENT:
            try:
                lag_ms = max(0.0, float(f.get("lag_ms", "")))
            except ValueError:
                return
            if not math.isfinite(lag_ms):
                return
            hist = self._lag.get((event.queue,))
            if hist is None:
                hist = self._lag[(event.queue,)] = _Hist(self.buckets)
            hist.observe(lag_ms / 1000)
        elif name == WEBHOOK_DELIVERY_EVENT:
            outcome = f.get("outcome", "")
            key = (
                event.queue,
                self.subject_label(event.subject),
                outcome if outcome in DELIVERY_OUTCOMES else OTHER,
            )
            self._deliveries[key] = self._deliveries.get(key, 0) + 1
        elif name == BREAKER_STATE_EVENT:
            to = f.get("to", "")
            key = (
                event.queue,
                self.subject_label(event.subject),
                to if to in ("closed", "open", "half-open") else OTHER,
            )
            self._transitions[key] = self._transitions.get(key, 0) + 1

    # ------------------------------------------------------------------ prometheus
    def describe(self) -> Iterator[Metric]:
        """The metric families, without samples."""
        return iter(self._families(empty=True))

    def collect(self) -> Iterator[Metric]:
        """The counter and histogram families as they are now."""
        return iter(self._families(empty=False))

    def _families(self, *, empty: bool) -> list[Metric]:
        ns = self.namespace
        # Copied at once (each list() runs without a thread switch): the loop may add
        # a series while a scraping thread reads.
        series = (
            []
            if empty
            else [(queue, list(names.items())) for queue, names in list(self._series.items())]
        )
        out: list[Metric] = []
        for name, doc in COUNTERS.items():
            labels = list(LABELS.get(name, ("queue", "job_name")))
            fam = CounterMetricFamily(f"{ns}_{name}", doc, labels=labels)
            attr = SERIES_METRICS.get(name)
            if attr is not None:
                for queue, named in series:
                    for label, one in named:
                        value = getattr(one, attr)
                        if value:  # counted at least once (as before any series existed)
                            fam.add_metric([queue, label], value)
            elif not empty:
                for key, value in list(self._counters[name].items()):
                    fam.add_metric(list(key), value)
            out.append(fam)
        bounds = [repr(b) for b in self.buckets] + ["+Inf"]
        for name, doc in HISTOGRAMS.items():
            labels = list(LABELS.get(name, ("queue", "job_name")))
            hfam = HistogramMetricFamily(f"{ns}_{name}", doc, labels=labels)
            attr = SERIES_METRICS.get(name)
            hists: list[tuple[list[str], _Hist]] = []
            if attr is not None:
                hists = [
                    ([queue, label], getattr(one, attr))
                    for queue, named in series
                    for label, one in named
                ]
            elif not empty:
                hists = [(list(key), hist) for key, hist in list(self._hists[name].items())]
            for values, hist in hists:
                counts, running = list(hist.counts), 0
                if not sum(counts):
                    continue  # never observed
                cumulative: list[tuple[str, float]] = []
                for bound, n in zip(bounds, counts, strict=True):
                    running += n
                    cumulative.append((bound, float(running)))
                hfam.add_metric(values, cumulative, hist.total)
            out.append(hfam)
        return out
