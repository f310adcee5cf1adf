"""The sections of ``AdvancedQueueConfig`` that enable the enterprise features: each one's
fields are the defaults its feature's manager is built with (docs/advanced-config.md)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ...enums import EncryptionAlgorithm, WebhookDeliveryStrategy
from ...errors import ConfigurationError
from ...options import MAX_COUNT, Duration, shown, to_int, to_ms
from ...redact import redact_url
from .base import Section, check_bool, check_choice, opt_int, opt_ms

__all__ = [
    "BatchingConfig",
    "CircuitBreakerConfig",
    "EncryptionConfig",
    "ExactlyOnceConfig",
    "FifoConfig",
    "GlobalQueueConfig",
    "MultiTenancyConfig",
    "RateLimitRule",
    "RateLimitingConfig",
    "RegionConfig",
    "WebhooksConfig",
    "WorkflowsConfig",
]


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
            check_bool(getattr(self, name), self._where(name))
        self._set("ttl_ms", opt_ms(self.ttl_ms, self._where("ttl_ms"), minimum=1))
        self._set(
            "window",
            check_choice(self.window, self._where("window"), ("ttl", "until_finished", "debounce")),
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
        check_bool(self.enabled, self._where("enabled"))
        check_bool(self.high_throughput, self._where("high_throughput"))
        to_int(self.group_concurrency, self._where("group_concurrency"), minimum=1, maximum=10_000)
        opt_int(self.max_group_size, self._where("max_group_size"), minimum=1)
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
        missing_key_wait_ms: how long a worker defers a job that needs a key this
            process does not hold, for a process that holds it, before it dead-letters
            it (0: at once).
    """

    PATH: ClassVar[str] = "advanced.encryption"
    HIDDEN: ClassVar[tuple[str, ...]] = ("keys",)
    enabled: bool = False
    algorithm: str = "aes-256-gcm"
    # Left out of repr() too: a key given as a dict would show its material.
    keys: Sequence[Any] = field(default=(), repr=False)
    current_key_id: str | None = None
    encrypt_all: bool = False
    rotation: bool = True
    missing_key_wait_ms: Any = 600_000

    def _check(self) -> None:
        for name in ("enabled", "encrypt_all", "rotation"):
            check_bool(getattr(self, name), self._where(name))
        self._set(
            "missing_key_wait_ms",
            to_ms(self.missing_key_wait_ms, self._where("missing_key_wait_ms")),
        )
        self._set(
            "algorithm",
            check_choice(
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
        check_bool(self.enabled, self._where("enabled"))
        check_bool(self.events, self._where("events"))
        self._set(
            "default_timeout_ms",
            opt_ms(self.default_timeout_ms, self._where("default_timeout_ms"), minimum=1),
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
        check_bool(self.enabled, self._where("enabled"))
        check_bool(self.events, self._where("events"))
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
        secrets: where this process finds endpoint secrets (never shown): a dict of
            endpoint id -> signing secret(s), or a callable endpoint id -> secret(s)
            or None (your vault: a plain function runs on a thread, an ``async def``
            one is awaited; ``WebhookManager(secrets=...)``).
        secret_cache_s: how long a callable source's answer is kept per endpoint, in
            seconds (0 to 86,400; 0: asked at every delivery; default 60).
        secret_timeout_s: how long one call of a callable source may take, in seconds
            (above 0, at most 120; default 10); past it the delivery is retried.
        run_service: deliver from this process's workers.
        history_max: the delivery records kept per endpoint, the newest (1 to
            1,000,000); a delivered or given-up one beyond them is deleted.
        history_ttl_s: how long a delivered or given-up record is kept (1 s to 10 years).
        dead_max: the dead deliveries kept per endpoint in the webhook DLQ, the newest
            (1 to 1,000,000; None: no bound); one beyond them is dropped with its record.
        dead_ttl_s: how long a dead delivery is kept at most (1 s to 10 years; None, the
            default: until replayed).
    """

    PATH: ClassVar[str] = "advanced.webhooks"
    HIDDEN: ClassVar[tuple[str, ...]] = ("secrets",)
    enabled: bool = False
    default_delivery_strategy: str = "guaranteed"
    allow_networks: Sequence[str] = ()
    # Left out of repr() too (a printed config, a crash report's locals).
    secrets: Mapping[str, Any] | Callable[[str], Any] | None = field(default=None, repr=False)
    secret_cache_s: float = 60.0
    secret_timeout_s: float = 10.0
    run_service: bool = True
    history_max: int = 10_000
    history_ttl_s: int = 7 * 86_400
    dead_max: int | None = 10_000
    dead_ttl_s: int | None = None

    def _check(self) -> None:
        check_bool(self.enabled, self._where("enabled"))
        check_bool(self.run_service, self._where("run_service"))
        # The bounds of WebhookManager's (features/webhooks/settings.py), which this
        # module does not import: it would load the feature (and httpx) with the config.
        self._set(
            "history_max",
            to_int(self.history_max, self._where("history_max"), minimum=1, maximum=1_000_000),
        )
        self._set(
            "history_ttl_s",
            to_int(
                self.history_ttl_s, self._where("history_ttl_s"), minimum=1, maximum=315_360_000
            ),
        )
        for option, top in (("dead_max", 1_000_000), ("dead_ttl_s", 315_360_000)):
            value = getattr(self, option)
            if value is not None:
                what = f"{self._where(option)} (or None: no bound)"
                self._set(option, to_int(value, what, minimum=1, maximum=top))
        self._set(
            "default_delivery_strategy",
            check_choice(
                self.default_delivery_strategy,
                self._where("default_delivery_strategy"),
                [s.value for s in WebhookDeliveryStrategy],
            ),
        )
        if isinstance(self.allow_networks, str) or not isinstance(self.allow_networks, Sequence):
            raise ConfigurationError(f"{self._where('allow_networks')} must be a list of networks")
        self._set("allow_networks", tuple(self.allow_networks))
        src = self.secrets
        if src is not None and not isinstance(src, Mapping) and not callable(src):
            raise ConfigurationError(
                f"{self._where('secrets')} must be a dict of endpoint id -> secret(s), "
                "or a callable endpoint id -> secret(s) (your vault), got "
                f"{type(src).__name__}"
            )
        # secretstore.py's bounds (MAX_SECRET_CACHE_S, MAX_SECRET_TIMEOUT_S).
        for option, most, positive, meaning in (
            ("secret_cache_s", 86_400, False, "0: ask the source at every delivery"),
            ("secret_timeout_s", 120, True, "a look-up taking longer is retried"),
        ):
            value = getattr(self, option)
            self._set(option, _seconds(value, self._where(option), most, positive, meaning))


def _seconds(value: Any, where: str, most: int, positive: bool, meaning: str) -> float:
    """``value`` as seconds from 0 (above 0 when ``positive``) to ``most``, else
    ``ConfigurationError`` naming ``where`` and saying what to give."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (
        number
        and (isinstance(value, int) or math.isfinite(value))  # a huge int: no float
        and (value > 0 if positive else value >= 0)
        and value <= most
    ):
        least = "above 0" if positive else "from 0"
        raise ConfigurationError(
            f"{where} must be a finite number of seconds, {least} to {most:,} ({meaning}), "
            f"got {shown(value)}: give a number in that range"
        )
    return float(value)


@dataclass(frozen=True)
class RegionConfig(Section):
    """One region of a global queue: its name, its Redis (a URL or client), whether it
    is the primary, and its priority for failover (lower first)."""

    PATH: ClassVar[str] = "advanced.global_queue.regions[]"
    region: str
    redis: Any = field(default=None, repr=False)  # a URL may hold a password
    is_primary: bool = False
    priority: int = 0

    def _check(self) -> None:
        if not isinstance(self.region, str) or not self.region:
            raise ConfigurationError(f"{self._where('region')} must be a non-empty name")
        check_bool(self.is_primary, self._where("is_primary"))
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

    Enabled, it gives ``queue.advanced.global_queue``: a ``GlobalQueueManager`` named
    like the queue over these regions, to ``await ...initialize()``
    (``features.regions.enable_from_advanced``; docs/multi-region.md).

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
        check_bool(self.enabled, self._where("enabled"))
        check_bool(self.replication, self._where("replication"))
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
    """``multi_tenancy``: tenants with quotas and fair dispatch (``TenantRegistry``).

    Attributes:
        enabled: enable tenancy on the queue (jobs may carry ``tenant_id``; a job of
            an unknown tenant is refused).
        enable_resource_quotas: enforce each tenant's quota (``max_queue_size`` at
            enqueue, ``max_concurrency`` and ``rate_limit`` at claim). False: tenants
            are tracked (counts, usage, regions) and fair dispatch applies, but no
            quota is enforced in this queue.
        fair_dispatch: weighted fair dispatch between tenants (False: plain queue
            order; cheaper).
        quantum: dispatch tickets per unit of weight (jobs of a weight-1 tenant in
            wait at once), 1 to 1000.
    """

    PATH: ClassVar[str] = "advanced.multi_tenancy"
    enabled: bool = False
    enable_resource_quotas: bool = True
    fair_dispatch: bool = True
    quantum: int = 16

    def _check(self) -> None:
        for name in ("enabled", "enable_resource_quotas", "fair_dispatch"):
            check_bool(getattr(self, name), self._where(name))
        to_int(self.quantum, self._where("quantum"), minimum=1, maximum=1000)


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
        check_bool(self.enabled, self._where("enabled"))
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
        check_bool(self.enabled, self._where("enabled"))
        check_bool(self.park_rate_limited_jobs, self._where("park_rate_limited_jobs"))
        opt_int(self.max, self._where("max"), minimum=1)
        self._set("duration_ms", to_ms(self.duration_ms, self._where("duration_ms"), minimum=1))
        if not isinstance(self.per_key, Mapping):
            raise ConfigurationError(f"{self._where('per_key')} must be a dict of pattern -> rule")
        # Each pattern by the rules of set_rate_limit / set_concurrency_limit, here, so a
        # bad one names its field (a key that is not text is refused, not turned into one).
        from ..flowcontrol import check_pattern

        self._set(
            "per_key",
            {
                check_pattern(k, f"{self.PATH}.per_key key"): RateLimitRule.parse(
                    v, f"{self.PATH}.per_key[{k!r}]"
                )
                for k, v in self.per_key.items()
            },
        )
        if not isinstance(self.concurrency_per_key, Mapping):
            raise ConfigurationError(
                f"{self._where('concurrency_per_key')} must be a dict of pattern -> int"
            )
        for k, v in self.concurrency_per_key.items():
            check_pattern(k, f"{self.PATH}.concurrency_per_key key")
            to_int(v, f"{self.PATH}.concurrency_per_key[{k!r}]", minimum=1, maximum=MAX_COUNT)
        self._set("concurrency_per_key", dict(self.concurrency_per_key))
        opt_int(self.global_concurrency, self._where("global_concurrency"), minimum=1)
