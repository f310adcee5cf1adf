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

import importlib.util
from typing import TYPE_CHECKING, Any

from ...errors import install_hint

try:  # looked for here, imported with the modules below on first use
    if importlib.util.find_spec("prometheus_client") is None:
        raise ModuleNotFoundError("No module named 'prometheus_client'", name="prometheus_client")
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "Prometheus metrics need the optional extra 'prometheus': "
        + install_hint("prometheus", "prometheus-client")
    ) from exc

from .. import load_lazily

if TYPE_CHECKING:
    from .collector import KitiumCollector, QueueReading
    from .exporter import MetricsServer, PrometheusExporter
    from .subscriber import (
        COUNTERS,
        DEFAULT_BUCKETS,
        HISTOGRAMS,
        OTHER,
        PrometheusSubscriber,
    )

#: Names imported on first use, by module (each loads prometheus_client).
_LAZY = {
    "KitiumCollector": "collector",
    "QueueReading": "collector",
    "MetricsServer": "exporter",
    "PrometheusExporter": "exporter",
    "COUNTERS": "subscriber",
    "DEFAULT_BUCKETS": "subscriber",
    "HISTOGRAMS": "subscriber",
    "OTHER": "subscriber",
    "PrometheusSubscriber": "subscriber",
}

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


if not TYPE_CHECKING:  # a type checker sees the names above, and flags any other

    def __getattr__(name: str) -> Any:
        return load_lazily(__name__, __path__, _LAZY, name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
