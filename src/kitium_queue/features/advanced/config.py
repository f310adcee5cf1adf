"""``AdvancedQueueConfig``: every enterprise feature of a queue in one typed object.

The brief's ``AdvancedQueueConfig`` with its thirteen sections, as frozen dataclasses.
Each section is also accepted as a plain dict with snake_case keys, and so is the whole
configuration; an unknown section or key is refused with the closest valid name::

    AdvancedQueueConfig(fifo={"enabled": True, "high_throughput": True})
    AdvancedQueueConfig.parse({"fifo": {"enabeld": True}})
    # ConfigurationError: unknown advanced.fifo option: 'enabeld' (did you mean 'enabled'?)

A section does nothing until ``enabled=True``; every other field has the default
documented on its class. Values are checked when the section is built (a bad value
fails at construction, naming the section and field), and once more against the queue
when ``JobQueue(..., advanced=...)`` enables the sections (``switchboard.py``).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import timedelta
from typing import Any, ClassVar, TypeVar

from ...enums import EncryptionAlgorithm, WebhookDeliveryStrategy
from ...errors import ConfigurationError
from ...options import MAX_COUNT, Duration, coerce, shown, to_int, to_ms, unknown_options_error
from ...redact import redact_url
from ..alerts.rules import AlertRule, parse_rule
from ..compliance.redaction import check_paths
from ..compression import ALGORITHMS

__all__ = [
    "SECTIONS",
    "AdvancedQueueConfig",
    "BatchingConfig",
    "CircuitBreakerConfig",
    "ComplianceConfig",
    "CompressionConfig",
    "CostOptimizationConfig",
    "EncryptionConfig",
    "ExactlyOnceConfig",
    "FifoConfig",
    "GlobalQueueConfig",
    "MonitoringConfig",
    "MultiTenancyConfig",
    "RateLimitRule",
    "RateLimitingConfig",
    "RegionConfig",
    "RetentionLimits",
    "RetentionPeriods",
    "StateLimit",
    "WebhooksConfig",
    "WorkflowsConfig",
]

S = TypeVar("S", bound="Section")


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{where} must be True or False, got {shown(value)}")
    return value


def _opt_ms(value: Any, where: str, minimum: int = 0) -> int | None:
    return None if value is None else to_ms(value, where, minimum=minimum)


def _opt_int(value: Any, where: str, minimum: int = 0, maximum: int = MAX_COUNT) -> int | None:
    return None if value is None else to_int(value, where, minimum=minimum, maximum=maximum)


def _choice(value: Any, where: str, choices: Sequence[str]) -> str:
    text = getattr(value, "value", value)
    if text not in choices:
        close = difflib.get_close_matches(str(text), list(choices), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigurationError(
            f"{where} must be one of {', '.join(choices)}, got {shown(value)}{hint}"
        )
    return str(text)


def _plain(value: Any) -> Any:
    """A field value as JSON-able data (for ``to_dict``)."""
    if isinstance(value, Section):
        return value.to_dict()
    if isinstance(value, AlertRule):
        return value.to_dict()
    if isinstance(value, timedelta):
        return int(value.total_seconds() * 1000)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class Section:
    """Base of the sections: built from an instance or a dict (``parse``), checked at
    construction (``_check``), shown as plain data (``to_dict``)."""

    #: Where the section sits, for messages (``advanced.fifo``).
    PATH: ClassVar[str] = "advanced"
    #: Fields never shown by ``to_dict`` (secrets), replaced by what is safe to show.
    HIDDEN: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        self._check()

    def _check(self) -> None:
        """Check and normalise the fields (``object.__setattr__`` on frozen fields)."""

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def _where(self, name: str) -> str:
        return f"{self.PATH}.{name}"

    @classmethod
    def parse(cls: type[S], value: Any, path: str | None = None) -> S:
        """``cls`` from an instance, a dict (unknown keys refused with a suggestion) or
        None (the defaults)."""
        return coerce(cls, value, path or cls.PATH)

    def to_dict(self) -> dict[str, Any]:
        """The section's values as plain data; secrets hidden."""
        out = {}
        for f in fields(self):  # type: ignore[arg-type]
            if f.name in self.HIDDEN:
                continue
            out[f.name] = _plain(getattr(self, f.name))
        return out


# ---------------------------------------------------------------------------- brief's sections
@dataclass(frozen=True)
class ExactlyOnceConfig(Section):
    """``exactly_once``: effectively-once processing (``IdempotencyManager``).

    Attributes:
        enabled: enable it (jobs may then use ``delivery_guarantee="exactly-once"``).
        ttl_ms: how long an idempotency key suppresses duplicates, and keeps an
            exactly-once job's result (sets the queue's ``idempotency_ttl``; None: the
            queue's, 24 h).
        window: the default window of a keyed job: ``ttl``, ``until_finished`` or
            ``debounce`` (docs/effectively-once.md).
        all_jobs: every job is exactly-once (a key derived from name and data when
            none is given).
        derive_keys: derive the missing key of an exactly-once job (False: refuse it).
    """

    PATH: ClassVar[str] = "advanced.exactly_once"
    enabled: bool = False
    ttl_ms: Duration | None = None
    window: str = "ttl"
    all_jobs: bool = False
    derive_keys: bool = True

    def _check(self) -> None:
        for name in ("enabled", "all_jobs", "derive_keys"):
            _bool(getattr(self, name), self._where(name))
        self._set("ttl_ms", _opt_ms(self.ttl_ms, self._where("ttl_ms"), minimum=1))
        self._set(
            "window",
            _choice(self.window, self._where("window"), ("ttl", "until_finished", "debounce")),
        )


@dataclass(frozen=True)
class FifoConfig(Section):
    """``fifo``: FIFO message groups (``FIFOQueueManager``).

    Attributes:
        enabled: enable it (jobs may then use ``message_group_id``).
        high_throughput: keep no per-group counts (faster; no ``max_group_size``).
        group_concurrency: jobs of one group running at once (default 1: strict order).
        max_group_size: most unfinished jobs per group (None: no limit).
    """

    PATH: ClassVar[str] = "advanced.fifo"
    enabled: bool = False
    high_throughput: bool = False
    group_concurrency: int = 1
    max_group_size: int | None = None

    def _check(self) -> None:
        _bool(self.enabled, self._where("enabled"))
        _bool(self.high_throughput, self._where("high_throughput"))
        to_int(self.group_concurrency, self._where("group_concurrency"), minimum=1, maximum=10_000)
        _opt_int(self.max_group_size, self._where("max_group_size"), minimum=1)
        if self.high_throughput and self.max_group_size is not None:
            raise ConfigurationError(
                f"{self.PATH}: max_group_size needs per-group counts, which high_throughput "
                "turns off: use one or the other"
            )


@dataclass(frozen=True)
class EncryptionConfig(Section):
    """``encryption``: payload encryption (``EncryptionManager``; extra ``encryption``).

    Attributes:
        enabled: enable it (jobs may then use ``encrypted=True``).
        algorithm: the algorithm of keys given without one: ``aes-256-gcm`` (default)
            or ``aes-256-cbc`` (with HMAC-SHA-256).
        keys: the keys this process holds: ``{"key_id", "key"}`` dicts (base64 of 32
            bytes) or ``KeyConfig`` s. Never shown by ``config show`` (ids only).
            Keys may also be added later: ``queue.advanced.encryption.add_key(...)``.
        current_key_id: the key new jobs use when the queue has none yet.
        encrypt_all: encrypt every job.
        rotation: run the re-encryption pass after ``rotate_key`` (leader only).
    """

    PATH: ClassVar[str] = "advanced.encryption"
    HIDDEN: ClassVar[tuple[str, ...]] = ("keys",)
    enabled: bool = False
    algorithm: str = "aes-256-gcm"
    keys: Sequence[Any] = ()
    current_key_id: str | None = None
    encrypt_all: bool = False
    rotation: bool = True

    def _check(self) -> None:
        for name in ("enabled", "encrypt_all", "rotation"):
            _bool(getattr(self, name), self._where(name))
        self._set(
            "algorithm",
            _choice(
                self.algorithm, self._where("algorithm"), [a.value for a in EncryptionAlgorithm]
            ),
        )
        if isinstance(self.keys, (str, bytes, Mapping)) or not isinstance(self.keys, Sequence):
            raise ConfigurationError(f"{self._where('keys')} must be a list of keys")
        self._set("keys", tuple(self.keys))

    def key_ids(self) -> list[str]:
        """The ids of the keys given (what ``config show`` prints instead of keys)."""
        return [
            str(k.get("key_id") if isinstance(k, Mapping) else getattr(k, "key_id", "?"))
            for k in self.keys
        ]

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "key_ids": self.key_ids()}


@dataclass(frozen=True)
class WorkflowsConfig(Section):
    """``workflows``: workflows and job dependencies (``JobChainManager``).

    Attributes:
        enabled: enable them (``depends_on``, ``execute_workflow``).
        default_timeout_ms: the ``timeout`` of a workflow step that sets none (None:
            the queue's default job timeout).
        retention_ms: how long a finished workflow's records are kept (7 days).
        events: report workflow ends in process (leader-only service).
    """

    PATH: ClassVar[str] = "advanced.workflows"
    enabled: bool = False
    default_timeout_ms: Duration | None = None
    retention_ms: Duration = 7 * 86_400_000
    events: bool = True

    def _check(self) -> None:
        _bool(self.enabled, self._where("enabled"))
        _bool(self.events, self._where("events"))
        self._set(
            "default_timeout_ms",
            _opt_ms(self.default_timeout_ms, self._where("default_timeout_ms"), minimum=1),
        )
        self._set(
            "retention_ms", to_ms(self.retention_ms, self._where("retention_ms"), minimum=1000)
        )


@dataclass(frozen=True)
class CircuitBreakerConfig(Section):
    """``circuit_breaker``: circuit breakers (``CircuitBreakerManager``).

    Attributes:
        enabled: enable them (``circuit_breaker_id``, ``create_breaker``).
        default_failure_threshold: the failure percentage that opens a breaker created
            without a ``failure_threshold`` (default 50).
        default_min_requests: the outcomes needed in the window before such a breaker
            may open (default 10).
        events: report state changes in process (leader-only service).
    """

    PATH: ClassVar[str] = "advanced.circuit_breaker"
    enabled: bool = False
    default_failure_threshold: float = 50.0
    default_min_requests: int = 10
    events: bool = True

    def _check(self) -> None:
        _bool(self.enabled, self._where("enabled"))
        _bool(self.events, self._where("events"))
        pct = self.default_failure_threshold
        if isinstance(pct, bool) or not isinstance(pct, (int, float)) or not 0 < pct <= 100:
            raise ConfigurationError(
                f"{self._where('default_failure_threshold')} must be a percentage in (0, 100], "
                f"got {shown(pct)}"
            )
        self._set("default_failure_threshold", float(pct))
        to_int(
            self.default_min_requests,
            self._where("default_min_requests"),
            minimum=1,
            maximum=1_000_000,
        )


@dataclass(frozen=True)
class WebhooksConfig(Section):
    """``webhooks``: signed webhooks (``WebhookManager``; extra ``webhooks``).

    Attributes:
        enabled: enable them (``webhook_url``, ``register_webhook``).
        default_delivery_strategy: the strategy of an endpoint registered without one:
            ``guaranteed`` (default), ``reliable`` or ``best-effort``.
        allow_networks: non-public networks the SSRF guard lets through
            (``["10.0.0.0/8"]``).
        secrets: endpoint id -> signing secret(s), kept in this process (never shown).
        run_service: deliver from this process's workers.
    """

    PATH: ClassVar[str] = "advanced.webhooks"
    HIDDEN: ClassVar[tuple[str, ...]] = ("secrets",)
    enabled: bool = False
    default_delivery_strategy: str = "guaranteed"
    allow_networks: Sequence[str] = ()
    secrets: Mapping[str, Any] | None = None
    run_service: bool = True

    def _check(self) -> None:
        _bool(self.enabled, self._where("enabled"))
        _bool(self.run_service, self._where("run_service"))
        self._set(
            "default_delivery_strategy",
            _choice(
                self.default_delivery_strategy,
                self._where("default_delivery_strategy"),
                [s.value for s in WebhookDeliveryStrategy],
            ),
        )
        if isinstance(self.allow_networks, str) or not isinstance(self.allow_networks, Sequence):
            raise ConfigurationError(f"{self._where('allow_networks')} must be a list of networks")
        self._set("allow_networks", tuple(self.allow_networks))
        if self.secrets is not None and not isinstance(self.secrets, Mapping):
            raise ConfigurationError(
                f"{self._where('secrets')} must be a dict of endpoint id -> secret"
            )


@dataclass(frozen=True)
class RegionConfig(Section):
    """One region of a global queue: its name, its Redis (a URL or client), whether it
    is the primary, and its priority for failover (lower first)."""

    PATH: ClassVar[str] = "advanced.global_queue.regions[]"
    region: str
    redis: Any = None
    is_primary: bool = False
    priority: int = 0

    def _check(self) -> None:
        if not isinstance(self.region, str) or not self.region:
            raise ConfigurationError(f"{self.PATH}: region must be a non-empty name")
        _bool(self.is_primary, self._where("is_primary"))
        to_int(self.priority, self._where("priority"), minimum=0, maximum=1000)

    def to_dict(self) -> dict[str, Any]:
        where = self.redis if isinstance(self.redis, (str, Mapping)) else type(self.redis).__name__
        return {
            "region": self.region,
            "redis": redact_url(where) if self.redis is not None else None,
            "is_primary": self.is_primary,
            "priority": self.priority,
        }


@dataclass(frozen=True)
class GlobalQueueConfig(Section):
    """``global_queue``: one queue over several regions (``GlobalQueueManager``).

    Not available in this version: ``enabled=True`` is refused with a message saying
    so. The section is defined so configurations can be written for it.

    Attributes:
        enabled: enable it.
        regions: ``RegionConfig`` s (or dicts).
        replication: replicate jobs to the other regions.
        failover_timeout_ms: how long the primary may be unreachable before failover.
    """

    PATH: ClassVar[str] = "advanced.global_queue"
    enabled: bool = False
    regions: Sequence[Any] = ()
    replication: bool = True
    failover_timeout_ms: Duration = 5000

    def _check(self) -> None:
        _bool(self.enabled, self._where("enabled"))
        _bool(self.replication, self._where("replication"))
        if isinstance(self.regions, (str, Mapping)) or not isinstance(self.regions, Sequence):
            raise ConfigurationError(f"{self._where('regions')} must be a list of regions")
        self._set(
            "regions",
            tuple(
                RegionConfig.parse(r, f"{self.PATH}.regions[{i}]")
                for i, r in enumerate(self.regions)
            ),
        )
        self._set(
            "failover_timeout_ms",
            to_ms(self.failover_timeout_ms, self._where("failover_timeout_ms"), minimum=1),
        )


@dataclass(frozen=True)
class MultiTenancyConfig(Section):
    """``multi_tenancy``: tenants with quotas (``tenant_id``).

    Attributes:
        enabled: enable it (available once the tenancy feature is installed; refused
            with a message saying so otherwise).
        enable_resource_quotas: enforce each tenant's quota (queue size, concurrency,
            rate).
    """

    PATH: ClassVar[str] = "advanced.multi_tenancy"
    enabled: bool = False
    enable_resource_quotas: bool = True

    def _check(self) -> None:
        _bool(self.enabled, self._where("enabled"))
        _bool(self.enable_resource_quotas, self._where("enable_resource_quotas"))


@dataclass(frozen=True)
class BatchingConfig(Section):
    """``batching``: the defaults of batch processors (``queue.process_batch``).

    Attributes:
        enabled: use these defaults for ``process_batch`` calls that leave them out.
        size: most jobs in a batch (default 100).
        min_size: a batch of the jobs claimed together is handed over once it has this
            many (default 1).
        max_wait_ms: a batch is handed over at the latest this long after its first
            job (default 1000).
    """

    PATH: ClassVar[str] = "advanced.batching"
    enabled: bool = False
    size: int = 100
    min_size: int = 1
    max_wait_ms: Duration = 1000

    def _check(self) -> None:
        _bool(self.enabled, self._where("enabled"))
        to_int(self.size, self._where("size"), minimum=1, maximum=10_000)
        to_int(self.min_size, self._where("min_size"), minimum=1, maximum=self.size)
        self._set("max_wait_ms", to_ms(self.max_wait_ms, self._where("max_wait_ms")))


@dataclass(frozen=True)
class RateLimitRule(Section):
    """At most ``max`` job starts per ``duration_ms`` for each rate-limit key matching
    the rule's pattern."""

    PATH: ClassVar[str] = "advanced.rate_limiting.per_key[]"
    max: int
    duration_ms: Duration = 1000

    def _check(self) -> None:
        to_int(self.max, self._where("max"), minimum=1, maximum=MAX_COUNT)
        self._set("duration_ms", to_ms(self.duration_ms, self._where("duration_ms"), minimum=1))


@dataclass(frozen=True)
class RateLimitingConfig(Section):
    """``rate_limiting``: queue-wide and per-key limits (flow control).

    Attributes:
        enabled: enable them.
        max / duration_ms: at most ``max`` job starts per ``duration_ms`` in the whole
            queue, across workers (the worker limiter; None: no queue-wide limit).
        per_key: key pattern (exact, ``"prefix*"`` or ``"*"``) -> ``RateLimitRule`` (or
            ``{"max", "duration_ms"}``), for jobs added with ``rate_limit_key``.
        concurrency_per_key: key pattern -> most running jobs per concurrency key
            (``concurrency_key``).
        global_concurrency: most running jobs of the queue across workers (None: no
            cap).
        park_rate_limited_jobs: park jobs over their rate until their window ends
            (instead of leaving them in wait).
    """

    PATH: ClassVar[str] = "advanced.rate_limiting"
    enabled: bool = False
    max: int | None = None
    duration_ms: Duration = 1000
    per_key: Mapping[str, Any] = field(default_factory=dict)
    concurrency_per_key: Mapping[str, int] = field(default_factory=dict)
    global_concurrency: int | None = None
    park_rate_limited_jobs: bool = False

    def _check(self) -> None:
        _bool(self.enabled, self._where("enabled"))
        _bool(self.park_rate_limited_jobs, self._where("park_rate_limited_jobs"))
        _opt_int(self.max, self._where("max"), minimum=1)
        self._set("duration_ms", to_ms(self.duration_ms, self._where("duration_ms"), minimum=1))
        if not isinstance(self.per_key, Mapping):
            raise ConfigurationError(f"{self._where('per_key')} must be a dict of pattern -> rule")
        self._set(
            "per_key",
            {
                str(k): RateLimitRule.parse(v, f"{self.PATH}.per_key[{k!r}]")
                for k, v in self.per_key.items()
            },
        )
        if not isinstance(self.concurrency_per_key, Mapping):
            raise ConfigurationError(
                f"{self._where('concurrency_per_key')} must be a dict of pattern -> int"
            )
        for k, v in self.concurrency_per_key.items():
            to_int(v, f"{self.PATH}.concurrency_per_key[{k!r}]", minimum=1, maximum=MAX_COUNT)
        self._set("concurrency_per_key", dict(self.concurrency_per_key))
        _opt_int(self.global_concurrency, self._where("global_concurrency"), minimum=1)


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
        _bool(self.enabled, self._where("enabled"))
        self._set("algorithm", _choice(self.algorithm, self._where("algorithm"), ALGORITHMS))
        to_int(self.threshold_bytes, self._where("threshold_bytes"), minimum=1, maximum=268_435_456)
        _opt_int(self.level, self._where("level"), minimum=1, maximum=22)


@dataclass(frozen=True)
class StateLimit(Section):
    """A retention limit of one state: keep at most ``count`` jobs, none older than
    ``age_ms`` (None: no such limit)."""

    PATH: ClassVar[str] = "advanced.cost_optimization.retention"
    count: int | None = None
    age_ms: Duration | None = None

    def _check(self) -> None:
        _opt_int(self.count, self._where("count"), minimum=0)
        self._set("age_ms", _opt_ms(self.age_ms, self._where("age_ms")))


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
        _bool(self.enabled, self._where("enabled"))
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
            _bool(getattr(self, name), self._where(name))
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
            self._set(state, _opt_ms(getattr(self, state), self._where(state), minimum=1))

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
        _bool(self.enabled, self._where("enabled"))
        _bool(self.redact_everywhere, self._where("redact_everywhere"))
        self._set("retention", RetentionPeriods.parse(self.retention))
        self._set("redact_fields", check_paths(self.redact_fields, self._where("redact_fields")))
        self._set(
            "sweep_interval_ms",
            to_ms(self.sweep_interval_ms, self._where("sweep_interval_ms"), minimum=10),
        )
        to_int(self.erase_batch, self._where("erase_batch"), minimum=1, maximum=1000)


# ---------------------------------------------------------------------------- the whole
#: The sections, in the brief's order: name -> class.
SECTIONS: dict[str, type[Section]] = {
    "exactly_once": ExactlyOnceConfig,
    "fifo": FifoConfig,
    "encryption": EncryptionConfig,
    "workflows": WorkflowsConfig,
    "circuit_breaker": CircuitBreakerConfig,
    "webhooks": WebhooksConfig,
    "global_queue": GlobalQueueConfig,
    "multi_tenancy": MultiTenancyConfig,
    "batching": BatchingConfig,
    "rate_limiting": RateLimitingConfig,
    "cost_optimization": CostOptimizationConfig,
    "monitoring": MonitoringConfig,
    "compliance": ComplianceConfig,
}


@dataclass(frozen=True)
class AdvancedQueueConfig:
    """The configuration of every enterprise feature of a queue (the brief's
    ``AdvancedQueueConfig``): pass it as ``JobQueue(..., advanced=...)``.

    Each section is a dataclass of its own (or a dict of its fields) and does nothing
    until ``enabled=True``. See each section's class for its fields and defaults, and
    docs/advanced-config.md for the whole picture.

    Example::

        queue = JobQueue("orders", redis="redis://localhost:6379/0", advanced={
            "exactly_once": {"enabled": True, "ttl_ms": 3_600_000},
            "fifo": {"enabled": True},
            "cost_optimization": {"enabled": True, "retention": {"dlq": {"count": 10_000}}},
            "compliance": {"enabled": True, "redact_fields": ["user.email"]},
        })
    """

    exactly_once: Any = None
    fifo: Any = None
    encryption: Any = None
    workflows: Any = None
    circuit_breaker: Any = None
    webhooks: Any = None
    global_queue: Any = None
    multi_tenancy: Any = None
    batching: Any = None
    rate_limiting: Any = None
    cost_optimization: Any = None
    monitoring: Any = None
    compliance: Any = None

    def __post_init__(self) -> None:
        for name, cls in SECTIONS.items():
            object.__setattr__(self, name, cls.parse(getattr(self, name), f"advanced.{name}"))

    @classmethod
    def parse(cls, value: Any) -> AdvancedQueueConfig:
        """An ``AdvancedQueueConfig`` from one, from a dict of sections (unknown sections
        refused with a suggestion) or None."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise ConfigurationError(
                f"advanced must be an AdvancedQueueConfig or a dict of sections, got "
                f"{type(value).__name__}"
            )
        bad = [k for k in value if k not in SECTIONS]
        if bad:
            raise unknown_options_error("advanced", bad, list(SECTIONS), "section")
        return cls(**value)

    def section(self, name: str) -> Section:
        """The section ``name`` (``"fifo"``, ...)."""
        if name not in SECTIONS:
            raise unknown_options_error("advanced", [name], list(SECTIONS), "section")
        out: Section = getattr(self, name)
        return out

    def enabled_sections(self) -> list[str]:
        """The names of the enabled sections, in the brief's order."""
        return [n for n in SECTIONS if getattr(self, n).enabled]

    def to_dict(self) -> dict[str, Any]:
        """Every section as plain data (secrets hidden)."""
        return {n: getattr(self, n).to_dict() for n in SECTIONS}
