"""Job options and queue configuration: typed dataclasses that also accept dicts.

Durations are milliseconds (``int`` or ``float``) or ``datetime.timedelta``. Unknown keys
are rejected with an error that names them and lists the valid ones.

Every numeric option and argument has a documented range (README, "Limits and ranges"), checked here
by ``to_ms`` (durations) and ``to_int`` (counts and sizes): a value outside it -- negative, NaN,
infinite, above the maximum, a ``bool`` or a ``str`` where a number is expected -- raises
``ConfigurationError`` naming the field and its range, never ``OverflowError``, ``ValueError`` or
``TypeError``. Names, ids and keys are checked by ``check_text``.
"""

from __future__ import annotations

import difflib
import math
import operator
import re
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from datetime import timedelta
from typing import Any, Literal, TypeVar, Union, overload

from .enums import DeliveryGuarantee
from .errors import ConfigurationError
from .limits import MAX_DELAY_MS, clip

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
    "check_text",
    "coerce",
    "has_bad_char",
    "shown",
    "shown_bare",
    "to_int",
    "to_ms",
    "unknown_options_error",
]

Duration = Union[int, float, timedelta]  # noqa: UP007 - a runtime alias on 3.10
T = TypeVar("T")

#: Highest job priority (higher runs first).
MAX_PRIORITY = 65535
#: Largest count option: attempts, retention counts, max_stalled_count, rate-limit and
#: concurrency-limit maxima (exact in a double and in a signed 32-bit int).
MAX_COUNT = 1_000_000_000
#: Largest ``worker.concurrency`` (a worker starts up to that many threads).
MAX_CONCURRENCY = 10_000
#: Largest ``events_max_len`` (entries kept in the event stream).
MAX_EVENTS_MAX_LEN = 10_000_000
#: Largest ``max_log_lines`` (log lines kept per job).
MAX_LOG_LINES = 1_000_000
#: Largest ``max_payload_bytes`` (256 MiB, half of Redis' default bulk-string limit).
MAX_PAYLOAD_LIMIT = 268_435_456
#: Largest ``limit`` of the query methods (``get_jobs_by_status``, ``get_dlq_jobs``).
MAX_QUERY_LIMIT = 100_000
DEFAULT_TIMEOUT_MS = 300_000


def lookup_id(value: Any, what: str) -> str:
    """An id given to look something up (a job, a schedule): any non-empty string that
    can be sent to Redis (ids stored before names were checked are found as they are);
    a lone surrogate (text that was not valid UTF-8), which nothing stored can hold, is
    refused with a ``ConfigurationError`` that says so."""
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{what} must be a non-empty string, got {shown(value)}")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ConfigurationError(
            f"{what} {shown(value)} holds a lone surrogate (text that was not valid UTF-8) "
            "and cannot name anything stored: check its encoding"
        ) from None
    return value


def shown(value: Any) -> str:
    """A value for an error message: its repr, clipped, so control characters and lone
    surrogates appear escaped and a huge value cannot flood the message."""
    try:
        text = repr(value)
    except Exception:
        return f"<{type(value).__name__}>"
    return clip(text, 80)


def shown_bare(value: Any) -> str:
    """An id or key for a message: as it is when it is short printable text (``job
    order-42 does not exist`` reads best bare), else ``shown`` (escaped and clipped)."""
    if isinstance(value, str) and 0 < len(value) <= 80 and value.isprintable():
        return value
    return shown(value)


def _span(ms: int) -> str:
    return f"{ms} ms (10 years)" if ms == MAX_DELAY_MS else f"{ms} ms"


@overload
def to_ms(
    value: Any,
    what: str,
    *,
    allow_none: Literal[False] = ...,
    minimum: int = ...,
    maximum: int = ...,
) -> int: ...


@overload
def to_ms(
    value: Any, what: str, *, allow_none: bool, minimum: int = ..., maximum: int = ...
) -> int | None: ...


def to_ms(
    value: Any,
    what: str,
    *,
    allow_none: bool = False,
    minimum: int = 0,
    maximum: int = MAX_DELAY_MS,
) -> int | None:
    """Convert a duration (ms as ``int``/``float``, or a ``timedelta``) to whole ms.

    The result lies in ``minimum .. maximum`` (default ``0 .. MAX_DELAY_MS``, 10 years).
    Fractions are rounded to the nearest ms, except that a positive value never becomes
    0 (``0.4`` gives 1 ms): 0 often means "no limit" or "at once", a different thing.
    ``None`` is returned for ``None`` when ``allow_none``.

    Raises ``ConfigurationError`` naming ``what`` and the range for anything else:
    negative, NaN, infinite, above ``maximum``, ``bool``, ``str``, other types.
    """
    if value is None:
        if allow_none:
            return None
        raise ConfigurationError(
            f"{what} must be a duration (ms or timedelta) from {minimum} to "
            f"{_span(maximum)}, not None"
        )
    if isinstance(value, timedelta):
        # Whole microseconds: exact for every timedelta, where total_seconds() would
        # round the largest ones.
        us = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
        negative = us < 0
        ms, rest = divmod(us, 1000)
        if rest >= 500:
            ms += 1
        positive = us > 0
    elif isinstance(value, int) and not isinstance(value, bool):
        ms, negative, positive = int(value), value < 0, value > 0
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigurationError(
                f"{what} must be a finite number of ms from {minimum} to {_span(maximum)}, "
                f"got {shown(value)}"
            )
        ms, negative, positive = round(value), value < 0, value > 0
    else:
        whole: int | None = None
        if not isinstance(value, bool):  # True is a mistake where a duration is expected
            try:
                whole = operator.index(value)  # integer-like objects (numpy.int64)
            except TypeError:
                whole = None
        if whole is None:
            raise ConfigurationError(
                f"{what} must be milliseconds (int or float) or a datetime.timedelta, from "
                f"{minimum} to {_span(maximum)}, got {shown(value)}"
            )
        ms, negative, positive = whole, whole < 0, whole > 0
    if positive and ms == 0:
        ms = 1
    if negative or ms < minimum:
        raise ConfigurationError(
            f"{what} must be >= {minimum} ms (and at most {_span(maximum)}), got {shown(value)}"
        )
    if ms > maximum:
        raise ConfigurationError(f"{what} must be at most {_span(maximum)}, got {shown(value)}")
    return ms


def to_int(value: Any, what: str, *, minimum: int, maximum: int) -> int:
    """An integer option within ``minimum .. maximum``.

    Accepts ``int`` and integer-like objects (``numpy.int64``); refuses ``bool`` (almost
    always a mistake where a count is expected), floats, strings and anything outside the
    range with a ``ConfigurationError`` naming ``what`` and the range.
    """
    if isinstance(value, (bool, float)):
        n = None
    else:
        try:
            n = operator.index(value)
        except TypeError:
            n = None
    if n is None or not minimum <= n <= maximum:
        raise ConfigurationError(
            f"{what} must be an int >= {minimum} and <= {maximum}, got {shown(value)}"
        )
    return n


# C0 control characters, DEL and lone surrogates (UTF-16 halves, which UTF-8 cannot
# encode: file names decoded with "surrogateescape" carry them).
_BAD_CHAR = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")  # where the words of a camelCase name begin


def check_text(
    value: Any, what: str, *, max_len: int | None, rule: str = "", quote: bool = True
) -> str:
    """A name, id or key: a non-empty ``str`` of at most ``max_len`` characters without
    control characters (U+0000-U+001F, U+007F) or lone surrogates.

    Such characters cannot be stored (surrogates have no UTF-8 form) or would forge lines in logs
    and text output, so they are refused here, before the value joins a batch sent to Redis. The
    error names ``what`` and shows the value escaped and clipped, never raw. ``rule`` is appended to
    the description of valid values. ``max_len=None``: the length is checked elsewhere (the message
    names no limit). ``quote=False``: the value is personal data (a subject id): the error says what
    is wrong and where, never the value.
    """
    fits = type(value) is str and value and (max_len is None or len(value) <= max_len)
    if fits and _BAD_CHAR.search(value) is None:
        return str(value)  # valid (str() of a str is itself): a refusal's message below
    most = "" if max_len is None else f" of at most {max_len} characters"
    valid = (
        f"a non-empty string{most} without control characters (such as line breaks) "
        f"or lone surrogates{rule}"
    )
    if not isinstance(value, str) or not value:
        got = (
            shown(value) if quote else ("an empty string" if value == "" else type(value).__name__)
        )
        raise ConfigurationError(f"{what} must be {valid}, got {got}")
    said = shown(value) if quote else "a value not shown (it is personal data)"
    if max_len is not None and len(value) > max_len:
        raise ConfigurationError(f"{what} must be {valid}, got {len(value)} characters: {said}")
    bad = _BAD_CHAR.search(value)
    if bad is not None:
        ch = bad.group()
        kind = "a lone surrogate" if "\ud800" <= ch <= "\udfff" else "a control character"
        raise ConfigurationError(
            f"{what} must be {valid}, got {said} ({kind} U+{ord(ch):04X} at index {bad.start()})"
        )
    return value


def has_bad_char(value: str) -> bool:
    """Whether ``value`` holds a control character or a lone surrogate."""
    return _BAD_CHAR.search(value) is not None


def did_you_mean(key: Any, valid: Collection[str], spellings: Iterable[str] = ()) -> str:
    """`` (did you mean 'name'?)`` for ``key``: the first of ``spellings`` (other spellings of it,
    then a camelCase key's snake_case one) in ``valid``, else the closest of ``valid``; or ""."""
    if not isinstance(key, str):
        return ""
    tried = [*spellings, _CAMEL.sub("_", key).lower()]
    close = [s for s in tried if s in valid] or difflib.get_close_matches(key, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_options_error(
    section: str, bad: list[Any], valid: list[str], noun: str = "option"
) -> ConfigurationError:
    """The error for unknown keys ``bad`` of ``section``: each shown escaped, with the closest valid
    name as a suggestion (``did_you_mean``), then the valid names. ``noun``: what the keys are."""
    parts = [f"{shown(key)}{did_you_mean(key, valid)}" for key in bad]
    return ConfigurationError(
        f"unknown {section} {noun}{'s' if len(bad) > 1 else ''}: {', '.join(parts)}; "
        f"valid {noun}s are: {', '.join(sorted(valid))}"
    )


def coerce(cls: type[T], value: Any, section: str, noun: str = "option") -> T:
    """Build config dataclass ``cls`` from an instance, a dict (snake_case keys) or None;
    ``noun``: what the dict's keys are, for the error about unknown ones."""
    if value is None:
        value = {}  # the defaults: a class with a required field says which it needs
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"{section} must be a {cls.__name__} or a dict, got {type(value).__name__}"
        )
    valid = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    bad = [k for k in value if k not in valid]
    if bad:
        raise unknown_options_error(section, bad, valid, noun)
    missing = [
        f.name
        for f in fields(cls)  # type: ignore[arg-type]
        if f.name not in value and f.default is MISSING and f.default_factory is MISSING
    ]
    if missing:
        raise ConfigurationError(
            f"{section} needs {', '.join(repr(m) for m in missing)}; valid options are: "
            f"{', '.join(valid)}"
        )
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
        if not isinstance(self.type, str) or self.type not in ("exponential", "fixed", "custom"):
            raise ConfigurationError(
                f"backoff type {shown(self.type)} is not supported; use 'exponential', "
                "'fixed' or 'custom'"
            )
        if self.type == "custom" and not self.strategy:
            raise ConfigurationError(
                "backoff type 'custom' needs strategy='<name>' of a function registered "
                "with queue.register_backoff(name, fn)"
            )
        if self.strategy is not None:
            check_text(self.strategy, "backoff.strategy", max_len=256)
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
            return cls(to_int(value, f"{what} count", minimum=0, maximum=MAX_COUNT), -1)
        if isinstance(value, timedelta):
            return cls(-1, to_ms(value, what) or 0)
        if isinstance(value, Mapping):
            bad = [k for k in value if k not in ("count", "age")]
            if bad:
                raise unknown_options_error(what, bad, ["count", "age"])
            count = value.get("count", -1)
            if not (type(count) is int and count == -1):
                # -1 = keep all (the default); any other count is 0 .. MAX_COUNT.
                count = to_int(count, f"{what}.count", minimum=0, maximum=MAX_COUNT)
            age = value.get("age")
            return cls(count, -1 if age is None else (to_ms(age, f"{what}.age") or 0))
        raise ConfigurationError(
            f"{what} must be a bool, a count (int), an age (timedelta) or "
            f"{{'count': N, 'age': ms}}, got {shown(value)}"
        )


@dataclass(frozen=True, slots=True)
class JobOptions:
    """Options of one job (all optional; unset ones fall back to the queue's defaults).

    Durations are ms (int or float) or ``timedelta``, from 0 to 10 years
    (``limits.MAX_DELAY_MS``); the README's "Limits and ranges" lists every range.

    Attributes:
        attempts: total runs allowed, the first included (default 3; 1 .. 10^9).
        delay: ms before the job may start (default 0).
        priority: 0..65535, **higher runs first** (default 0); FIFO within a priority.
        backoff: delay before each retry, a ``BackoffOptions`` or dict.
        timeout: ms a run may take before it is failed (default 300000; 0 = no limit;
            a positive value below 1 ms counts as 1 ms, never as "no limit").
        remove_on_complete: retention of completed jobs (default: keep the newest 1000).
        remove_on_fail: retention of failed jobs when the DLQ is off (default: keep all).
        job_id: your own id; adding a job whose id exists returns the existing id and
            writes nothing. At most 512 characters, no control characters or lone
            surrogates, and not made of digits only: numeric ids are the ones the queue
            generates (use a prefix, e.g. ``"order-123"``).
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
    """``JobOptions`` plus the options of the enterprise features.

    ``idempotency_key`` (duplicate enqueues within the idempotency window return the
    original job id) and ``delivery_guarantee`` are handled by the core; the others
    belong to features (FIFO groups, encryption, breakers, webhooks, workflows, regions,
    tenants, flow control) and are rejected with a clear error unless that feature is
    enabled on the queue (it declares them in the queue's option registry,
    ``jobspec.JobSpec``). These fields only give the options a typed spelling: which
    options a queue accepts is decided by that registry.

    ``rate_limit_key`` / ``concurrency_key``: the job counts against the per-key rate
    limit / concurrency cap declared with ``queue.set_rate_limit`` /
    ``queue.set_concurrency_limit`` (see docs/scheduling.md).

    ``subject_id``: whose personal data the job carries; ``erase_subject`` of the
    compliance feature erases every job of a subject (see docs/compliance.md).
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
    subject_id: str | None = None


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """Queue-wide retry defaults (the ``retry`` section)."""

    max_attempts: int = 3
    backoff_type: str = "exponential"
    backoff_delay: Duration = 1000
    max_backoff_delay: Duration | None = 30_000


@dataclass(frozen=True, slots=True)
class DLQConfig:
    """Dead-letter queue (the ``dlq`` section).

    Attributes:
        enabled: dead-letter jobs that fail for good (default True); when False they go
            to the ``failed`` state.
        queue_name: label of the DLQ in events, metrics and the CLI (default
            ``<queue>-dlq``). The DLQ lives under the queue's own hash tag so moving a job
            there is atomic on Redis Cluster too.
        notification_handler: sync or async ``fn(job_info)`` called by the worker after a
            job was dead-lettered.
        max_jobs, max_age: keep at most this many dead-lettered jobs, and none older than
            this (ms or a duration); the oldest go as new ones come. None: kept until
            replayed or removed (the default; it grows with every job failing for good).
    """

    enabled: bool = True
    queue_name: str | None = None
    notification_handler: Callable[[Any], Awaitable[None] | None] | None = None
    max_jobs: int | None = None
    max_age: Any = None

    def __post_init__(self) -> None:
        # bool("no") is True: a flag that is not a bool is never guessed at.
        if not isinstance(self.enabled, bool):
            raise ConfigurationError(
                f"dlq.enabled must be True or False, got {shown(self.enabled)}"
            )
        if self.queue_name is not None and not isinstance(self.queue_name, str):
            raise ConfigurationError(
                f"dlq.queue_name must be a str or None, got {type(self.queue_name).__name__}"
            )
        if self.notification_handler is not None and not callable(self.notification_handler):
            raise ConfigurationError(
                "dlq.notification_handler must be a function taking the JobInfo (sync or "
                f"async) or None, got {type(self.notification_handler).__name__}"
            )
        if self.max_jobs is not None:
            n = to_int(self.max_jobs, "dlq.max_jobs", minimum=1, maximum=MAX_COUNT)
            object.__setattr__(self, "max_jobs", n)
        age = to_ms(self.max_age, "dlq.max_age", allow_none=True, minimum=1)
        object.__setattr__(self, "max_age", age)


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """Lease and stall settings (the ``settings`` section), all in ms.

    Attributes:
        max_stalled_count: times a job may lose its worker (lease expired) before it is
            dead-lettered instead of re-run (default 2).
        max_stalled_interval: how often each worker sweeps for expired leases (5000).
        lock_duration: lease length (30000). A job whose worker dies runs again after at
            most this long plus one sweep.
        lock_renew_time: how often a worker renews its leases (default lock_duration/2).
        allow_eviction: accept a Redis whose ``maxmemory-policy`` may evict keys (refused
            at connect by default: evicted job records are lost jobs). With it the queue
            runs and reports the records it finds missing.
    """

    max_stalled_count: int = 2
    max_stalled_interval: Duration = 5000
    lock_duration: Duration = 30_000
    lock_renew_time: Duration | None = None
    allow_eviction: bool = False


@dataclass(frozen=True, slots=True)
class LimiterConfig:
    """At most ``max`` jobs started per ``duration`` ms, across all workers of the queue."""

    max: int
    duration: Duration = 1000


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Worker controls (the ``worker`` section).

    Attributes:
        concurrency: jobs run at once by one worker (default 20).
        limiter: queue-wide rate limit, ``LimiterConfig`` or ``{"max", "duration"}``.
        shutdown_timeout: on stop, ms to let running jobs finish before they are handed
            back to the queue (default 30000).
        scheduler: run the schedule loop in this worker (default True); any number of
            workers may run it, each tick is enqueued once.
        max_jobs_per_child: ``mode="process"`` children are replaced after this many
            jobs each (memory a processor leaks is given back); None (the default):
            a child serves jobs for as long as it lives.
        thread_overrun: a plain ``def`` processor's run past its timeout: ``"release"``
            it (default; its thread runs on) or ``"hold"`` it until the thread returns
            (``overruns.hold``), ``thread_overrun_max`` ms at most (None: its timeout).
        loop_block_warn: warn of an event loop blocked this many ms (0: off; ``loopwatch.py``).
    """

    concurrency: int = 20
    limiter: LimiterConfig | Mapping[str, Any] | None = None
    shutdown_timeout: Duration = 30_000
    scheduler: bool = True
    max_jobs_per_child: int | None = None
    thread_overrun: str = "release"
    thread_overrun_max: Duration | None = None
    loop_block_warn: Duration | None = None

    def __post_init__(self) -> None:
        from . import loopwatch, workerchecks  # they import this module: at call time

        workerchecks.check_worker(self)
        loopwatch.check_option(self)


@dataclass(slots=True)
class Policy:
    """Resolved per-job execution policy used by the worker (internal)."""

    attempts: int = 3
    backoff: BackoffOptions = field(default_factory=BackoffOptions)
    timeout_ms: int | None = DEFAULT_TIMEOUT_MS
    jitter_ms: int = 0
    keep_completed: RetentionPolicy = field(default_factory=lambda: RetentionPolicy(1000, -1))
    keep_failed: RetentionPolicy = field(default_factory=RetentionPolicy)
