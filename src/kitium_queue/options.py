"""Job options and queue configuration: typed dataclasses that also accept dicts.

Durations are milliseconds (``int``) or ``datetime.timedelta``. Unknown keys are rejected
with an error that names them and lists the valid ones.
"""

from __future__ import annotations

import difflib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from typing import Any, TypeVar, Union

from .enums import DeliveryGuarantee
from .errors import ConfigurationError

__all__ = [
    "BackoffOptions",
    "DLQConfig",
    "Duration",
    "ExtendedJobOptions",
    "JobOptions",
    "LimiterConfig",
    "QueueSettings",
    "RetentionPolicy",
    "RetryConfig",
    "WorkerConfig",
    "coerce",
    "to_ms",
]

Duration = Union[int, float, timedelta]  # noqa: UP007 - a runtime alias on 3.10
T = TypeVar("T")

MAX_PRIORITY = 65535
DEFAULT_TIMEOUT_MS = 300_000


def to_ms(value: Any, what: str, *, allow_none: bool = False) -> int | None:
    """Convert an int/float of milliseconds or a timedelta to whole milliseconds."""
    if value is None:
        if allow_none:
            return None
        raise ConfigurationError(f"{what} must be a duration (ms or timedelta), not None")
    if isinstance(value, timedelta):
        ms = value.total_seconds() * 1000.0
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        ms = float(value)
    else:
        raise ConfigurationError(
            f"{what} must be milliseconds (int) or a datetime.timedelta, got {value!r}"
        )
    if ms < 0 or ms != ms:
        raise ConfigurationError(f"{what} must be >= 0 ms, got {value!r}")
    return round(ms)


def _unknown(section: str, bad: list[str], valid: list[str]) -> ConfigurationError:
    parts = []
    for key in bad:
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        parts.append(f"{key!r}{hint}")
    return ConfigurationError(
        f"unknown {section} option{'s' if len(bad) > 1 else ''}: {', '.join(parts)}; "
        f"valid options are: {', '.join(sorted(valid))}"
    )


def coerce(cls: type[T], value: Any, section: str) -> T:
    """Build config dataclass ``cls`` from an instance, a dict (snake_case keys) or None."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"{section} must be a {cls.__name__} or a dict, got {type(value).__name__}"
        )
    valid = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    bad = [k for k in value if k not in valid]
    if bad:
        raise _unknown(section, bad, valid)
    return cls(**value)


@dataclass(frozen=True, slots=True)
class BackoffOptions:
    """How long to wait before the next attempt of a failed job.

    Attributes:
        type: ``"exponential"`` (delay * 2^(n-1)), ``"fixed"`` (delay every time) or
            ``"custom"`` (the strategy registered with ``queue.register_backoff``).
        delay: base delay in ms.
        max_delay: cap of the computed delay in ms (None = no cap).
        strategy: name of the registered custom strategy (``type="custom"`` only).
    """

    type: str = "exponential"
    delay: Duration = 1000
    max_delay: Duration | None = 30_000
    strategy: str | None = None

    def __post_init__(self) -> None:
        if self.type not in ("exponential", "fixed", "custom"):
            raise ConfigurationError(
                f"backoff type {self.type!r} is not supported; use 'exponential', 'fixed' "
                "or 'custom'"
            )
        if self.type == "custom" and not self.strategy:
            raise ConfigurationError(
                "backoff type 'custom' needs strategy='<name>' of a function registered "
                "with queue.register_backoff(name, fn)"
            )
        object.__setattr__(self, "delay", to_ms(self.delay, "backoff.delay"))
        object.__setattr__(
            self, "max_delay", to_ms(self.max_delay, "backoff.max_delay", allow_none=True)
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type, "delay": self.delay}
        if self.max_delay is not None:
            d["max_delay"] = self.max_delay
        if self.strategy:
            d["strategy"] = self.strategy
        return d


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How many finished jobs to keep: ``count`` newest (-1 all, 0 none), max ``age`` ms."""

    count: int = -1
    age: int = -1

    @classmethod
    def parse(cls, value: Any, what: str) -> RetentionPolicy:
        """``True`` → remove at once; ``False`` → keep all; ``int`` → keep the newest N;
        ``timedelta`` → keep for that long; ``{"count": N, "age": ms}`` → both."""
        if isinstance(value, RetentionPolicy):
            return value
        if value is True:
            return cls(0, -1)
        if value is False or value is None:
            return cls(-1, -1)
        if isinstance(value, int):
            if value < 0:
                raise ConfigurationError(f"{what} count must be >= 0, got {value}")
            return cls(value, -1)
        if isinstance(value, timedelta):
            return cls(-1, to_ms(value, what) or 0)
        if isinstance(value, Mapping):
            bad = [k for k in value if k not in ("count", "age")]
            if bad:
                raise _unknown(what, bad, ["count", "age"])
            count = value.get("count", -1)
            if not isinstance(count, int) or count < -1:
                raise ConfigurationError(f"{what}.count must be an int >= 0, got {count!r}")
            age = value.get("age")
            return cls(count, -1 if age is None else (to_ms(age, f"{what}.age") or 0))
        raise ConfigurationError(
            f"{what} must be a bool, a count (int), an age (timedelta) or "
            f"{{'count': N, 'age': ms}}, got {value!r}"
        )


@dataclass(frozen=True, slots=True)
class JobOptions:
    """Options of one job (all optional; unset ones fall back to the queue's defaults).

    Attributes:
        attempts: total runs allowed, the first included (default 3).
        delay: ms before the job may start (default 0).
        priority: 0..65535, **higher runs first** (default 0); FIFO within a priority.
        backoff: delay before each retry, a ``BackoffOptions`` or dict.
        timeout: ms a run may take before it is failed (default 300000; 0 = no limit).
        remove_on_complete: retention of completed jobs (default: keep the newest 1000).
        remove_on_fail: retention of failed jobs when the DLQ is off (default: keep all).
        job_id: your own id; adding a job whose id exists returns the existing id and
            writes nothing.
        lifo: take this job before the others of its priority.
        jitter: up to this many ms of random extra delay, added to ``delay`` and to each
            retry's backoff, to spread bursts.
    """

    attempts: int | None = None
    delay: Duration | None = None
    priority: int | None = None
    backoff: BackoffOptions | Mapping[str, Any] | None = None
    timeout: Duration | None = None
    remove_on_complete: Any = None
    remove_on_fail: Any = None
    job_id: str | None = None
    lifo: bool | None = None
    jitter: Duration | None = None


@dataclass(frozen=True, slots=True)
class ExtendedJobOptions(JobOptions):
    """``JobOptions`` plus the enterprise options of the brief.

    ``idempotency_key`` (duplicate enqueues within the idempotency window return the
    original job id) and ``delivery_guarantee`` are handled by the core; the others
    belong to features (FIFO groups, encryption, breakers, webhooks, workflows, regions,
    tenants, flow control) and are rejected with a clear error unless that feature is
    enabled on the queue.

    ``rate_limit_key`` / ``concurrency_key``: the job counts against the per-key rate
    limit / concurrency cap declared with ``queue.set_rate_limit`` /
    ``queue.set_concurrency_limit`` (see docs/scheduling.md).
    """

    delivery_guarantee: DeliveryGuarantee | str | None = None
    idempotency_key: str | None = None
    message_group_id: str | None = None
    encrypted: bool | None = None
    circuit_breaker_id: str | None = None
    webhook_url: str | None = None
    workflow_id: str | None = None
    depends_on: list[str] | None = None
    region: str | None = None
    tenant_id: str | None = None
    rate_limit_key: str | None = None
    concurrency_key: str | None = None


JOB_OPTION_NAMES = frozenset(f.name for f in fields(ExtendedJobOptions))
CORE_OPTION_NAMES = frozenset(f.name for f in fields(JobOptions)) | {
    "idempotency_key",
    "delivery_guarantee",
}


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """Queue-wide retry defaults (the brief's ``retry`` section)."""

    max_attempts: int = 3
    backoff_type: str = "exponential"
    backoff_delay: Duration = 1000
    max_backoff_delay: Duration | None = 30_000


@dataclass(frozen=True, slots=True)
class DLQConfig:
    """Dead-letter queue (the brief's ``dlq`` section).

    Attributes:
        enabled: dead-letter jobs that fail for good (default True); when False they go
            to the ``failed`` state.
        queue_name: label of the DLQ in events, metrics and the CLI (default
            ``<queue>-dlq``). The DLQ lives under the queue's own hash tag so moving a job
            there is atomic on Redis Cluster too.
        notification_handler: sync or async ``fn(job_info)`` called by the worker after a
            job was dead-lettered.
    """

    enabled: bool = True
    queue_name: str | None = None
    notification_handler: Callable[[Any], Awaitable[None] | None] | None = None


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """Lease and stall settings (the brief's ``settings`` section), all in ms.

    Attributes:
        max_stalled_count: times a job may lose its worker (lease expired) before it is
            dead-lettered instead of re-run (default 2).
        max_stalled_interval: how often each worker sweeps for expired leases (5000).
        lock_duration: lease length (30000). A job whose worker dies runs again after at
            most this long plus one sweep.
        lock_renew_time: how often a worker renews its leases (default lock_duration/2).
    """

    max_stalled_count: int = 2
    max_stalled_interval: Duration = 5000
    lock_duration: Duration = 30_000
    lock_renew_time: Duration | None = None


@dataclass(frozen=True, slots=True)
class LimiterConfig:
    """At most ``max`` jobs started per ``duration`` ms, across all workers of the queue."""

    max: int
    duration: Duration = 1000


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Worker controls (the brief's ``worker`` section).

    Attributes:
        concurrency: jobs run at once by one worker (default 20).
        limiter: queue-wide rate limit, ``LimiterConfig`` or ``{"max", "duration"}``.
        shutdown_timeout: on stop, ms to let running jobs finish before they are handed
            back to the queue (default 30000).
        scheduler: run the schedule loop in this worker (default True); any number of
            workers may run it, each tick is enqueued once.
    """

    concurrency: int = 20
    limiter: LimiterConfig | Mapping[str, Any] | None = None
    shutdown_timeout: Duration = 30_000
    scheduler: bool = True


@dataclass(slots=True)
class Policy:
    """Resolved per-job execution policy used by the worker (internal)."""

    attempts: int = 3
    backoff: BackoffOptions = field(default_factory=BackoffOptions)
    timeout_ms: int | None = DEFAULT_TIMEOUT_MS
    jitter_ms: int = 0
    keep_completed: RetentionPolicy = field(default_factory=lambda: RetentionPolicy(1000, -1))
    keep_failed: RetentionPolicy = field(default_factory=RetentionPolicy)
