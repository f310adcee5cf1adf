"""Prometheus metrics (optional extra ``prometheus``): docs/observability.md.

* ``PrometheusSubscriber``: a lifecycle subscriber counting what this process saw
  (jobs added, processed, failed, retried, dead-lettered, stalled; processing duration
  and queue wait histograms), labelled per queue and job name (names capped).
* ``KitiumCollector``: gauges read from Redis at scrape time (jobs per state, DLQ size,
  latency, paused; breaker states and FIFO group count where enabled).
* ``PrometheusExporter``: both in one registry (yours or a new one) and ``/metrics``
  served over HTTP; ``kitium-queue metrics APP --port N`` runs it.
"""

from __future__ import annotations

try:
    import prometheus_client  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "Prometheus metrics need the optional extra 'prometheus': "
        'pip install "kitium-job-queue[prometheus]" (prometheus-client)'
    ) from exc

from .collector import KitiumCollector, QueueReading
from .exporter import MetricsServer, PrometheusExporter
from .subscriber import COUNTERS, DEFAULT_BUCKETS, HISTOGRAMS, OTHER, PrometheusSubscriber

__all__ = [
    "COUNTERS",
    "DEFAULT_BUCKETS",
    "HISTOGRAMS",
    "OTHER",
    "KitiumCollector",
    "MetricsServer",
    "PrometheusExporter",
    "PrometheusSubscriber",
    "QueueReading",
]
