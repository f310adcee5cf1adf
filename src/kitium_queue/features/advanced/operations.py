"""The operational sections of ``AdvancedQueueConfig``:
``cost_optimization``, ``monitoring`` and ``compliance`` (docs/advanced-config.md,
docs/compliance.md)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ...errors import ConfigurationError
from ...options import Duration, to_int, to_ms
from ..alerts.rules import parse_rule
from ..compliance.redaction import check_paths
from ..compression import ALGORITHMS
from .base import Section, check_bool, check_choice, opt_int, opt_ms

__all__ = [
    "ComplianceConfig",
    "CompressionConfig",
    "CostOptimizationConfig",
    "MonitoringConfig",
    "RetentionLimits",
    "RetentionPeriods",
    "StateLimit",
]


# ---------------------------------------------------------------------------- cost optimization
@dataclass(frozen=True)
class CompressionConfig(Section):
    """Payload and result compression (``features.compression``).

    Attributes:
        enabled: compress (default True once cost optimization is enabled).
        algorithm: ``auto`` (zstd when ``zstandard`` is installed — extra
            ``compression`` — else zlib), ``zstd`` or ``zlib``.
        threshold_bytes: smallest encoded value compressed (default 1024).
        level: compression level (zstd 1..22, default 3; zlib 1..9, default 6).
    """

    PATH: ClassVar[str] = "advanced.cost_optimization.compression"
    enabled: bool = True
    algorithm: str = "auto"
    threshold_bytes: int = 1024
    level: int | None = None

    def _check(self) -> None:
        check_bool(self.enabled, self._where("enabled"))
        self._set("algorithm", check_choice(self.algorithm, self._where("algorithm"), ALGORITHMS))
        to_int(self.threshold_bytes, self._where("threshold_bytes"), minimum=1, maximum=268_435_456)
        opt_int(self.level, self._where("level"), minimum=1, maximum=22)


@dataclass(frozen=True)
class StateLimit(Section):
    """A retention limit of one state: keep at most ``count`` jobs, none older than
    ``age_ms`` (None: no such limit)."""

    PATH: ClassVar[str] = "advanced.cost_optimization.retention"
    count: int | None = None
    age_ms: Duration | None = None

    def _check(self) -> None:
        opt_int(self.count, self._where("count"), minimum=0)
        self._set("age_ms", opt_ms(self.age_ms, self._where("age_ms")))


@dataclass(frozen=True)
class RetentionLimits(Section):
    """Retention limits per finished state (``StateLimit`` or ``{"count", "age_ms"}``)."""

    PATH: ClassVar[str] = "advanced.cost_optimization.retention"
    completed: Any = None
    failed: Any = None
    dlq: Any = None

    def _check(self) -> None:
        for state in ("completed", "failed", "dlq"):
            v = getattr(self, state)
            if v is not None:
                self._set(state, StateLimit.parse(v, f"{self.PATH}.{state}"))


@dataclass(frozen=True)
class CostOptimizationConfig(Section):
    """``cost_optimization``: smaller payloads and bounded finished sets.

    Attributes:
        enabled: enable it.
        compression: ``CompressionConfig`` (or dict): payloads and results above a size
            are stored compressed; readers take compressed and plain values alike.
        retention: ``RetentionLimits`` (or dict) per finished state (``completed``,
            ``failed``, ``dlq``): ``{"count": N, "age_ms": ms}``. They become the
            queue's default ``remove_on_complete`` / ``remove_on_fail``, and a
            leader-only service enforces them on each state every ``sweep_interval_ms``
            (the DLQ has no other bound).
        sweep_interval_ms: how often the retention service runs (default 60 s).
    """

    PATH: ClassVar[str] = "advanced.cost_optimization"
    enabled: bool = False
    compression: Any = None
    retention: Any = None
    sweep_interval_ms: Duration = 60_000

    def _check(self) -> None:
        check_bool(self.enabled, self._where("enabled"))
        self._set("compression", CompressionConfig.parse(self.compression))
        self._set("retention", RetentionLimits.parse(self.retention))
        self._set(
            "sweep_interval_ms",
            to_ms(self.sweep_interval_ms, self._where("sweep_interval_ms"), minimum=10),
        )


# ---------------------------------------------------------------------------- monitoring
@dataclass(frozen=True)
class MonitoringConfig(Section):
    """``monitoring``: metrics, traces and alert rules.

    Attributes:
        enabled: enable it.
        prometheus: count this process's jobs in a Prometheus registry and read the
            queue's gauges at scrape time (``queue.advanced.prometheus``: a
            ``PrometheusExporter``; extra ``prometheus``).
        tracing: trace jobs with OpenTelemetry from producer to worker (extra
            ``otel``).
        alerts: ``AlertRule`` s (or dicts): queue depth, oldest waiting job's age, DLQ
            growth, failure rate, open breakers (region lag: defined, needs a global
            queue), each firing and clearing once per crossing.
        evaluation_interval_ms: how often the leader evaluates the rules (5 s).
        alert_webhook_event: the webhook event name alerts are sent as, when webhooks
            are enabled (default ``queue-alert``; None: none).
        leader_lease_ms: the evaluating leader's lease: when it dies, another worker
            takes over within this long (default 10 s).
    """

    PATH: ClassVar[str] = "advanced.monitoring"
    enabled: bool = False
    prometheus: bool = False
    tracing: bool = False
    alerts: Sequence[Any] = ()
    evaluation_interval_ms: Duration = 5000
    alert_webhook_event: str | None = "queue-alert"
    leader_lease_ms: Duration = 10_000

    def _check(self) -> None:
        self._set(
            "leader_lease_ms",
            to_ms(self.leader_lease_ms, self._where("leader_lease_ms"), minimum=100),
        )
        for name in ("enabled", "prometheus", "tracing"):
            check_bool(getattr(self, name), self._where(name))
        if isinstance(self.alerts, (str, Mapping)) or not isinstance(self.alerts, Sequence):
            raise ConfigurationError(f"{self._where('alerts')} must be a list of alert rules")
        self._set(
            "alerts",
            tuple(parse_rule(r, f"{self.PATH}.alerts[{i}]") for i, r in enumerate(self.alerts)),
        )
        self._set(
            "evaluation_interval_ms",
            to_ms(self.evaluation_interval_ms, self._where("evaluation_interval_ms"), minimum=10),
        )
        if self.alert_webhook_event is not None and (
            not isinstance(self.alert_webhook_event, str) or not self.alert_webhook_event
        ):
            raise ConfigurationError(f"{self._where('alert_webhook_event')} must be a name or None")


# ---------------------------------------------------------------------------- compliance
@dataclass(frozen=True)
class RetentionPeriods(Section):
    """Retention periods per finished state (ms or ``timedelta``; None: none): a job that
    has been in the state longer is erased, with every copy of its data."""

    PATH: ClassVar[str] = "advanced.compliance.retention"
    completed: Duration | None = None
    failed: Duration | None = None
    dlq: Duration | None = None

    def _check(self) -> None:
        for state in ("completed", "failed", "dlq"):
            self._set(state, opt_ms(getattr(self, state), self._where(state), minimum=1))

    def periods(self) -> dict[str, int]:
        return {s: v for s in ("completed", "failed", "dlq") if (v := getattr(self, s)) is not None}


@dataclass(frozen=True)
class ComplianceConfig(Section):
    """``compliance``: retention periods, redaction and erasure by subject
    (``ComplianceManager``, docs/compliance.md).

    Attributes:
        enabled: enable it (jobs may then carry ``subject_id``;
            ``queue.advanced.compliance.erase_subject(subject_id)``).
        retention: ``RetentionPeriods`` (or dict) per finished state, enforced by a
            leader-only service: after the period nothing of the job is left.
        redact_fields: payload paths masked where jobs are shown (``"user.email"``,
            ``"items.*.card"``, ``"**.password"``).
        redact_everywhere: mask them in every query and ``queue.on`` handler too.
        sweep_interval_ms: how often the retention service runs (default 60 s).
        erase_batch: jobs erased per script call (default 200).
    """

    PATH: ClassVar[str] = "advanced.compliance"
    enabled: bool = False
    retention: Any = None
    redact_fields: Sequence[str] = ()
    redact_everywhere: bool = False
    sweep_interval_ms: Duration = 60_000
    erase_batch: int = 200

    def _check(self) -> None:
        check_bool(self.enabled, self._where("enabled"))
        check_bool(self.redact_everywhere, self._where("redact_everywhere"))
        self._set("retention", RetentionPeriods.parse(self.retention))
        self._set("redact_fields", check_paths(self.redact_fields, self._where("redact_fields")))
        self._set(
            "sweep_interval_ms",
            to_ms(self.sweep_interval_ms, self._where("sweep_interval_ms"), minimum=10),
        )
        to_int(self.erase_batch, self._where("erase_batch"), minimum=1, maximum=1000)
