"""Observability adapters of the brief: ``metrics`` (increment/observe) and ``telemetry``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

__all__ = ["MetricsAdapter", "Span", "TelemetryAdapter"]


@runtime_checkable
class MetricsAdapter(Protocol):
    """Anything with ``increment`` and ``observe`` (statsd, Datadog, Prometheus wrappers).

    Names emitted: ``jobs.added``, ``jobs.started``, ``jobs.completed``, ``jobs.failed``,
    ``jobs.retried``, ``jobs.dlq``, ``jobs.stalled`` (counters) and ``job.duration_ms``,
    ``job.wait_ms`` (observations); tags carry ``queue`` and ``job_name``.
    """

    def increment(
        self, name: str, value: float = 1, tags: Mapping[str, str] | None = None
    ) -> Any: ...

    def observe(self, name: str, value: float, tags: Mapping[str, str] | None = None) -> Any: ...


@runtime_checkable
class Span(Protocol):
    def set_attribute(self, key: str, value: Any) -> Any: ...

    def record_exception(self, error: BaseException) -> Any: ...

    def end(self) -> Any: ...


@runtime_checkable
class TelemetryAdapter(Protocol):
    """Tracer adapter: ``start_span(name, attributes)`` returns a ``Span``.

    Spans: ``kitium.enqueue`` around ``add_job``/``add_jobs`` and ``kitium.process``
    around each job run (attributes ``queue``, ``job.id``, ``job.name``, ``job.attempt``).
    """

    def start_span(self, name: str, attributes: Mapping[str, Any] | None = None) -> Span: ...
