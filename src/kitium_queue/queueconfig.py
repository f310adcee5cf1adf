"""``QueueConfig``: a queue's whole configuration as one typed object (the brief's
``QueueConfig``), accepted by ``JobQueue`` in place of its keyword arguments::

    config = QueueConfig("emails", redis="redis://localhost:6379/0",
                         retry=RetryConfig(max_attempts=5), worker={"concurrency": 50})
    queue = JobQueue(config)

Each field means what the ``JobQueue`` argument of the same name means (see its
docstring); the defaults are the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from .adapters import MetricsAdapter, TelemetryAdapter
from .codec import Codec
from .options import DLQConfig, JobOptions, QueueSettings, RetryConfig, WorkerConfig

__all__ = ["QueueConfig"]


@dataclass(frozen=True)
class QueueConfig:
    """The configuration of one queue: ``JobQueue(QueueConfig(...))``."""

    name: str
    redis: Any = "memory://"
    prefix: str = "kq"
    default_job_options: JobOptions | Mapping[str, Any] | None = None
    retry: RetryConfig | Mapping[str, Any] | None = None
    dlq: DLQConfig | Mapping[str, Any] | None = None
    settings: QueueSettings | Mapping[str, Any] | None = None
    worker: WorkerConfig | Mapping[str, Any] | None = None
    telemetry: TelemetryAdapter | None = None
    metrics: MetricsAdapter | None = None
    codecs: Sequence[Codec] = ()
    events_max_len: int = 10_000
    idempotency_ttl: Any = 86_400_000
    max_payload_bytes: int = 1_048_576
    max_log_lines: int = 1000
    principal: str | None = None
    advanced: Any = None

    def kwargs(self) -> dict[str, Any]:
        """The fields other than ``name``, as ``JobQueue`` keyword arguments."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "name"}
