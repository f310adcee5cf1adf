"""``QueueConfig``: a queue's whole configuration as one typed object,
accepted by ``JobQueue`` in place of its keyword arguments::

    config = QueueConfig("emails", redis="redis://localhost:6379/0",
                         retry=RetryConfig(max_attempts=5), worker={"concurrency": 50})
    queue = JobQueue(config)

Each field means what the ``JobQueue`` argument of the same name means (see its
docstring); the defaults are the same.

An unknown keyword of ``JobQueue``, ``QueueConfig`` or of the option classes it takes
(``JobOptions``, ``ExtendedJobOptions``, ``BackoffOptions``, ``RetryConfig``,
``DLQConfig``, ``QueueSettings``, ``WorkerConfig``, ``LimiterConfig``,
``RetentionPolicy``) raises
``ConfigurationError`` naming it, the closest valid one and all of them
(``keywords_checked``), where Python would raise a bare ``TypeError``.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from .adapters import MetricsAdapter, TelemetryAdapter
from .codec import Codec
from .errors import ConfigurationError
from .limits import printable
from .options import (
    BackoffOptions,
    DLQConfig,
    ExtendedJobOptions,
    JobOptions,
    LimiterConfig,
    QueueSettings,
    RetentionPolicy,
    RetryConfig,
    WorkerConfig,
    coerce,
    did_you_mean,
    unknown_options_error,
)

__all__ = ["QueueConfig", "coerce_section", "id_fixed", "keywords_checked"]

T = TypeVar("T")


def keywords_checked(
    cls: type[T],
    where: str | None = None,
    noun: str = "keyword",
    valid: Sequence[str] | None = None,
) -> type[T]:
    """Class decorator of a config dataclass: an unknown keyword argument of its
    constructor raises ``unknown_options_error`` (``unknown QueueConfig keyword: 'retyr'
    (did you mean 'retry'?); valid keywords are: ...``), not a bare ``TypeError``.
    ``where`` / ``noun``: how the error names the class and its keys (default: the
    class's name, "keyword"); ``valid``: its keywords when it is not a dataclass."""
    init = cls.__init__
    valid = list(valid) if valid is not None else [f.name for f in fields(cls)]  # type: ignore[arg-type]
    label = where or cls.__name__

    @functools.wraps(init)
    def checked(self: Any, /, *args: Any, **kwargs: Any) -> None:
        bad = [k for k in kwargs if k not in valid]
        if bad:
            exc, hint = unknown_options_error(label, bad, valid, noun), misplaced(label, bad)
            raise ConfigurationError(f"{exc}{hint}") if hint else exc
        init(self, *args, **kwargs)

    cls.__init__ = checked  # type: ignore[method-assign,assignment]
    return cls


# The option classes of options.py, checked here (options.py is at its size limit); the
# package imports this module, so they are checked before any of them can be used.
for _options in (
    BackoffOptions,
    DLQConfig,
    ExtendedJobOptions,
    JobOptions,
    LimiterConfig,
    QueueSettings,
    RetentionPolicy,
    RetryConfig,
    WorkerConfig,
):
    keywords_checked(_options)


#: The sections of a queue's configuration (``JobQueue`` keywords that take a dict) and
#: the option classes of their keys; a class's name (``QueueSettings(...)``) names its
#: section too.
_SECTIONS: dict[str, type] = {
    "settings": QueueSettings,
    "worker": WorkerConfig,
    "retry": RetryConfig,
    "dlq": DLQConfig,
    "default_job_options": ExtendedJobOptions,
}
_SECTION_OF = {cls.__name__: name for name, cls in _SECTIONS.items()} | {
    "JobOptions": "default_job_options"
}


def misplaced(section: str, keys: Sequence[Any]) -> str:
    """Where ``keys``, unknown in ``section`` of a queue's configuration, belong when they
    are a keyword of ``JobQueue`` itself (``settings={"max_payload_bytes": ...}``) or an
    option of another section (``worker={"lock_duration": ...}``): "; 'x' is ..." for
    each, or "" (keys that belong nowhere, and sections of anything else)."""
    here = _SECTION_OF.get(section, section)
    whole = here in ("QueueConfig", "JobQueue")  # the keywords of the queue itself
    if here not in _SECTIONS and not whole:
        return ""
    top = [f.name for f in fields(QueueConfig) if f.name != "name"]
    owner = "QueueConfig" if here == "QueueConfig" else "JobQueue"
    said = []
    for key in keys:
        if not isinstance(key, str):
            continue
        if key in top and not whole:
            said.append(
                f"{key!r} is a keyword of JobQueue itself, not a {here} option: "
                f"JobQueue(name, ..., {key}=...)"
            )
            continue
        places = [
            name
            for name, cls in _SECTIONS.items()
            if name != here and key in {f.name for f in fields(cls)}
        ]
        if places:
            where = " or ".join(f"{owner}(name, ..., {p}={{{key!r}: ...}})" for p in places)
            said.append(f"{key!r} is an option of {' or '.join(places)}: {where}")
        elif whole and not did_you_mean(key, top):  # misspelt and misplaced: 'concurency'
            near = [
                (name, hint[len(" (did you mean ") : -2])
                for name, cls in _SECTIONS.items()
                if (hint := did_you_mean(key, [f.name for f in fields(cls)]))
            ]
            said += [
                f"{key!r} looks like {name}'s {opt}: {owner}(name, ..., {name}={{{opt}: ...}})"
                for name, opt in near[:1]
            ]
    return "".join(f"; {text}" for text in said)


def coerce_section(cls: type[T], value: Any, section: str) -> T:
    """``options.coerce`` for a section of a queue's configuration: an unknown key that
    belongs elsewhere (``misplaced``) is refused saying where."""
    try:
        return coerce(cls, value, section)
    except ConfigurationError as exc:
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        bad = [k for k in value if k not in names] if isinstance(value, Mapping) else []
        hint = misplaced(section, bad) if bad else ""
        if not hint:
            raise
        raise ConfigurationError(f"{exc}{hint}") from None


@keywords_checked
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


_M = TypeVar("_M", bound=Callable[..., Awaitable[Any]])


def id_fixed(method: _M) -> _M:
    """Decorate an ``update_schedule(schedule_id, **changes)`` method: ``schedule_id=``
    given with the id (an attempt to rename the schedule) raises ``ConfigurationError``
    saying what to do instead, where Python would raise a bare ``TypeError`` (multiple
    values for one argument). ``update_schedule(schedule_id="x", ...)`` works as before.
    """

    @functools.wraps(method)
    async def checked(self: Any, /, *args: Any, **changes: Any) -> Any:
        if args and "schedule_id" in changes:
            old = printable(str(args[0]))
            raise ConfigurationError(
                f"update_schedule cannot change a schedule's id ({old!r}; schedule_id= "
                f"given too): remove_schedule({old!r}) and declare it again with "
                "schedule_id= the new id"
            )
        return await method(self, *args, **changes)

    return checked  # type: ignore[return-value]
