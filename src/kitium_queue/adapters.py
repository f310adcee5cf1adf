"""Observability adapters: ``metrics`` (increment/observe) and ``telemetry``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, TypeVar, runtime_checkable

from .errors import ConfigurationError

__all__ = ["MetricsAdapter", "Span", "TelemetryAdapter", "check_adapter"]

A = TypeVar("A")


@runtime_checkable
class MetricsAdapter(Protocol):
    """Anything with ``increment`` and ``observe`` (statsd, Datadog, Prometheus wrappers).

    Names emitted: ``jobs.added``, ``jobs.started``, ``jobs.completed``, ``jobs.failed``,
    ``jobs.retried``, ``jobs.dlq``, ``jobs.stalled`` (counters) and ``job.duration_ms``,
    ``job.wait_ms`` (observations); tags carry ``queue`` and ``job_name``. A worker whose
    event loop was blocked (``loopwatch.py``) adds ``worker.loop_blocked`` (counter) and
    ``worker.loop_blocked_ms`` (observation), tagged with ``queue``.
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


def check_adapter(value: A | None, what: str, methods: tuple[str, ...]) -> A | None:
    """``value`` (an adapter, or None) once it has the callable ``methods``; else a
    ``ConfigurationError`` naming ``what`` and the methods it lacks."""
    if value is None:
        return None
    lacking = [m for m in methods if not callable(getattr(value, m, None))]
    if lacking:
        raise ConfigurationError(
            f"{what} must be an object with {' and '.join(methods)} "
            f"{'method' if len(methods) == 1 else 'methods'} (or None); "
            f"{type(value).__name__} has no {', '.join(lacking)}"
        )
    return value
