"""The records of multi-tenancy: a tenant's config and quota, and its usage.

``TenantConfig`` and ``TenantQuota`` are frozen dataclasses checked on construction;
``TenantConfig.of`` / ``TenantQuota.of`` also take plain dicts with snake_case keys (an
unknown key is refused with the closest valid one suggested). ``TenantUsage`` is what
``TenantRegistry.get_tenant_usage`` reads: per queue and in total.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ...errors import ConfigurationError
from ...identity import check_scripts, format_char, script_mix
from ...keys import NAME_PUNCTUATION, check_key_part
from ...options import (
    MAX_COUNT,
    check_text,
    has_bad_char,
    shown,
    to_int,
    to_ms,
    unknown_options_error,
)
from ..flowcontrol import RateLimit
from .lua import MAX_TENANT_ID

__all__ = [
    "QueueUsage",
    "RateLimit",
    "TenantConfig",
    "TenantQuota",
    "TenantUsage",
    "check_tenant_id",
    "check_tenant_name",
    "tenant_id_lookalike",
]

_MAX_NAME = 256
_NAME_RULE = (
    f"a tenant name is a string of at most {_MAX_NAME} characters ('' for none) without "
    "control or format characters (line breaks, zero-width or bidirectional marks) or "
    "lone surrogates"
)
_MAX_REGIONS = 100
_MAX_REGION = 64
_MAX_QUEUE_SIZE = 1_000_000_000
_MAX_CONCURRENCY = 1_000_000
#: Weights accepted (a tenant's share of a backlogged queue is proportional to it).
MIN_WEIGHT, MAX_WEIGHT = 0.01, 1000.0


# Tenant ids found valid, so the check of every job's tenant_id is a set lookup (a
# deployment has a bounded number of tenants; past the bound ids are checked each time).
_VALID_IDS: set[str] = set()
_VALID_IDS_MAX = 10_000
#: What goes with any script in a tenant id (``identity.check_scripts``).
_ID_NEUTRAL = f"digits and {' '.join(NAME_PUNCTUATION)}"


def check_tenant_id(value: Any, what: str = "tenant_id", *, existing: bool = False) -> str:
    """A tenant id: 1 to 128 letters, digits and ``- _ . : # / +`` (it becomes part of
    key names, of the ACL patterns written for them and of messages), in Unicode NFKC
    form: a decomposed accent or a full-width letter would make a second tenant that
    looks like the first, so such a spelling is refused (never normalised). Its letters
    must not mix scripts either (``identity.script_mix``: ``\u0430cme`` with a Cyrillic
    "\u0430" reads as ``acme``); all-Cyrillic, all-Greek or all-Han ids are kept.

    ``existing=True`` names a tenant already stored (read, changed, listed or removed):
    the script rule is not applied there, so a tenant created before it stays reachable
    (listings flag it: ``tenant_id_lookalike``). Creating a tenant and a job's
    ``tenant_id`` apply it."""
    if type(value) is str and value in _VALID_IDS:
        return value
    check_text(value, what, max_len=MAX_TENANT_ID)
    out = check_key_part(value, what)
    canonical = unicodedata.normalize("NFKC", out)
    if canonical != out:
        raise ConfigurationError(
            f"{what} {ascii(out)[:300]} is not in Unicode NFKC form (it would look like "
            f"another tenant's id); write it as {ascii(canonical)[:300]}"
        )
    if script_mix(out) is not None:
        if existing:
            return out  # not cached: the cache holds ids valid everywhere
        check_scripts(out, what, neutral=_ID_NEUTRAL)
    if len(_VALID_IDS) < _VALID_IDS_MAX:
        _VALID_IDS.add(out)
    return out


def check_tenant_name(name: str) -> str:
    """A new tenant display name (``create_tenant``, ``update_tenant``): besides what
    ``TenantConfig`` checks, no format character (zero-width, bidirectional) either,
    the rule principal names keep (``identity.format_char``): the audit log records the
    name, and UIs show it. A name stored before the rule is still read."""
    bad = format_char(name)
    if bad is not None:
        raise ConfigurationError(
            f"tenant name {ascii(name)[:200]} contains a control or format character or a "
            f"lone surrogate ({bad}); {_NAME_RULE}"
        )
    return name


def tenant_id_lookalike(tenant_id: str) -> str | None:
    """None for a tenant id whose letters keep to one script; else what it mixes (a
    tenant stored before the rule: listings show this next to it)."""
    return script_mix(tenant_id)


def _limit(value: Any, what: str, maximum: int) -> int | None:
    """A count limit: None (or 0) for none, else an int from 1 to ``maximum``."""
    if value is None:
        return None
    n = to_int(value, what, minimum=0, maximum=maximum)
    return n or None


def _rate(value: Any) -> RateLimit | None:
    if value is None or isinstance(value, RateLimit):
        rl = value
    elif isinstance(value, Mapping):
        bad = [k for k in value if k not in ("max", "duration")]
        if bad:
            raise unknown_options_error("quota.rate_limit", bad, ["max", "duration"])
        if "max" not in value:
            raise ConfigurationError("quota.rate_limit needs 'max' (starts per duration ms)")
        rl = RateLimit(value["max"], value.get("duration", 1000))
    elif isinstance(value, int) and not isinstance(value, bool):
        rl = RateLimit(value, 1000)  # rateLimit: 1000 -> per second
    else:
        raise ConfigurationError(
            "quota.rate_limit must be starts per second (an int), RateLimit(max, duration) "
            f"or {{'max': n, 'duration': ms}}, got {shown(value)}"
        )
    if rl is None:
        return None
    return RateLimit(
        to_int(rl.max, "quota.rate_limit.max", minimum=1, maximum=MAX_COUNT),
        to_ms(rl.duration, "quota.rate_limit.duration", minimum=1),
    )


def _of(cls: Any, value: Any, section: str) -> dict[str, Any]:
    """The keyword arguments of ``cls`` from a mapping: unknown keys refused with a
    suggestion."""
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"{section} must be a {cls.__name__} or a dict, got {type(value).__name__}"
        )
    valid = [f.name for f in fields(cls)]
    bad = [k for k in value if k not in valid]
    if bad:
        raise unknown_options_error(section, bad, valid)
    return dict(value)


@dataclass(frozen=True, slots=True)
class TenantQuota:
    """What one tenant may use in each queue (docs/tenancy.md: what is enforced where).

    Attributes:
        max_queue_size: most unfinished jobs (waiting, delayed, pending, running,
            retrying) of the tenant in a queue; a job beyond is refused at enqueue,
            atomically (``QuotaExceededError``). None: no limit.
        max_concurrency: most of its jobs running at once in a queue, across every
            worker; the others wait their turn (no attempt spent). None: no limit.
        rate_limit: most of its jobs started per window in a queue, across every worker
            (``RateLimit(max, duration_ms)``; an int ``n`` means ``n`` per second, as
            ``rateLimit: 1000`` is). None: no limit.
    """

    max_queue_size: int | None = None
    max_concurrency: int | None = None
    rate_limit: RateLimit | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(
            self,
            "max_queue_size",
            _limit(self.max_queue_size, "quota.max_queue_size", _MAX_QUEUE_SIZE),
        )
        set_(
            self,
            "max_concurrency",
            _limit(self.max_concurrency, "quota.max_concurrency", _MAX_CONCURRENCY),
        )
        set_(self, "rate_limit", _rate(self.rate_limit))

    @classmethod
    def of(cls, value: TenantQuota | Mapping[str, Any] | None) -> TenantQuota:
        """A quota from itself, a dict with any of its fields, or None (no limits)."""
        if value is None:
            return cls()
        if isinstance(value, TenantQuota):
            return value
        return cls(**_of(cls, value, "tenant quota"))

    def merged(self, changes: TenantQuota | Mapping[str, Any] | None) -> TenantQuota:
        """This quota with ``changes``: a ``TenantQuota`` replaces it, a dict replaces
        the fields it names (None: that limit removed)."""
        if changes is None:
            return self
        if isinstance(changes, TenantQuota):
            return changes
        return replace(self, **_of(TenantQuota, changes, "tenant quota"))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        rl = self.rate_limit
        return {
            "max_queue_size": self.max_queue_size,
            "max_concurrency": self.max_concurrency,
            "rate_limit": None if rl is None else {"max": rl.max, "duration": rl.duration},
        }


def _regions(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ConfigurationError(
            f"allowed_regions must be a list of region names, got {shown(value)}"
        )
    out: list[str] = []
    for i, r in enumerate(value):
        name = check_key_part(
            check_text(r, f"allowed_regions[{i}]", max_len=_MAX_REGION), f"allowed_regions[{i}]"
        )
        if name not in out:
            out.append(name)
        if len(out) > _MAX_REGIONS:
            raise ConfigurationError(f"allowed_regions holds more than {_MAX_REGIONS} regions")
    return tuple(out)


def _weight(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"weight must be a number, got {shown(value)}")
    try:
        w = float(value)
    except OverflowError:  # an int beyond any float
        w = math.inf
    if not math.isfinite(w) or not MIN_WEIGHT <= w <= MAX_WEIGHT:
        raise ConfigurationError(
            f"weight must be from {MIN_WEIGHT} to {MAX_WEIGHT:g} (a tenant's share of a "
            f"busy queue is proportional to it), got {shown(value)}"
        )
    return w


@dataclass(frozen=True, slots=True)
class TenantConfig:
    """A tenant (the ``create_tenant`` config, plus its dispatch weight).

    Attributes:
        tenant_id: its id (letters, digits and ``- _ . : # / +``, at most 128): the
            ``tenant_id`` option of its jobs.
        name: a display name ('' for none): at most 256 characters, without control
            or format characters (``check_tenant_name``: refused in a new name; one
            stored before that rule is still read).
        quota: its limits in each queue (``TenantQuota``).
        allowed_regions: the regions its jobs may name with the ``region`` option
            (empty: any); a job naming another is refused at enqueue.
        weight: its share of a queue other tenants also keep busy, relative to theirs
            (fair dispatch; 0.01 to 1000, default 1).
    """

    tenant_id: str
    name: str = ""
    quota: TenantQuota = field(default_factory=TenantQuota)
    allowed_regions: tuple[str, ...] = ()
    weight: float = 1.0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        # The script rule applies when a tenant is created (TenantRegistry.create_tenant),
        # not here: a config read back from Redis, or changed, may predate it.
        set_(self, "tenant_id", check_tenant_id(self.tenant_id, existing=True))
        # Control characters and surrogates are refused here (read back too: they cannot
        # be stored or shown); format characters for new names (check_tenant_name).
        name = self.name
        if not isinstance(name, str) or len(name) > _MAX_NAME or has_bad_char(name):
            got = shown(name) if not isinstance(name, str) else ascii(name)[:200]
            size = f" ({len(name)} characters)" if isinstance(name, str) else ""
            raise ConfigurationError(f"{_NAME_RULE}; got {got}{size}")
        set_(self, "quota", TenantQuota.of(self.quota))
        set_(self, "allowed_regions", _regions(self.allowed_regions))
        set_(self, "weight", _weight(self.weight))

    @classmethod
    def of(cls, value: TenantConfig | Mapping[str, Any]) -> TenantConfig:
        """A config from itself or a dict (``tenant_id`` required; ``quota`` a dict or a
        ``TenantQuota``)."""
        if isinstance(value, TenantConfig):
            return value
        kwargs = _of(cls, value, "tenant config")
        if "tenant_id" not in kwargs:
            raise ConfigurationError("a tenant config needs 'tenant_id'")
        return cls(**kwargs)

    def changed(self, changes: Mapping[str, Any]) -> TenantConfig:
        """This config with ``changes`` (any field but ``tenant_id``; ``quota`` merged
        as ``TenantQuota.merged`` does)."""
        valid = [f.name for f in fields(TenantConfig) if f.name != "tenant_id"]
        bad = [k for k in changes if k not in valid]
        if bad:
            raise unknown_options_error("tenant update", bad, valid)
        kwargs = dict(changes)
        if "quota" in kwargs:
            kwargs["quota"] = self.quota.merged(kwargs["quota"])
        return replace(self, **kwargs)

    @property
    def lookalike(self) -> str | None:
        """None, or what the id's letters mix (``tenant_id_lookalike``): a tenant
        created before the script rule, which listings flag."""
        return script_mix(self.tenant_id)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what the registry stores, without its version)."""
        return {
            "tenant_id": self.tenant_id,
            "name": self.name,
            "quota": self.quota.to_dict(),
            "allowed_regions": list(self.allowed_regions),
            "weight": self.weight,
        }

    @classmethod
    def from_stored(cls, data: Mapping[str, Any]) -> TenantConfig:
        """A config from what the registry stores (read back from Redis: checked like
        any input)."""
        return cls.of(
            {
                k: data[k]
                for k in ("tenant_id", "name", "quota", "allowed_regions", "weight")
                if k in data
            }
        )


@dataclass(frozen=True, slots=True)
class QueueUsage:
    """One tenant in one queue, read atomically.

    Attributes:
        queue: the queue.
        queued: its unfinished jobs that are not running (waiting, delayed, pending in
            its lane, waiting to be retried).
        active: its jobs running now (claimed by a worker, lease not yet ended).
        held: of the queued ones, those in its lane: waiting for a dispatch turn, a
            free concurrency slot or the next rate window.
        rate_used: its starts in the current rate window (0 without a rate limit).
        rate_window_ends_ms: when that window ends (ms since the epoch, Redis clock), or
            None.
        completed, failed: totals since the tenant was first used in the queue.
        count_damaged: its count of unfinished jobs there (field ``n``) holds something
            that is not a count (damaged outside kitium-queue): ``queued`` then reads 0,
            and its new jobs under a ``max_queue_size`` are refused until the count is
            recounted (``TenantRegistry.sync()``, ``kitium-queue tenants sync``, or any
            worker within 30 s).
    """

    queue: str
    queued: int
    active: int
    held: int
    rate_used: int
    rate_window_ends_ms: int | None
    completed: int
    failed: int
    count_damaged: bool = False

    @classmethod
    def from_reply(cls, queue: str, r: Sequence[Any]) -> QueueUsage:
        """The usage read by ``tn_usage.lua`` (its reply ``r``; values read back from
        Redis: anything that is no count reads 0)."""

        def text(v: Any) -> str:
            return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)

        def count(v: Any) -> int:
            t = text(v)
            return int(t) if t.isascii() and t.isdigit() else 0

        n = text(r[2])
        active, ends = count(r[3]), count(r[8])
        return cls(
            queue=queue,
            queued=max(0, count(n) - active),
            active=active,
            held=count(r[5]),
            rate_used=count(r[6]),
            rate_window_ends_ms=ends or None,
            completed=count(r[9]),
            failed=count(r[10]),
            count_damaged=not (len(n) <= 15 and n.isascii() and n.isdigit()),
        )

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


#: The counts of a ``QueueUsage`` that a ``TenantUsage`` sums.
_SUMMED = ("queued", "active", "held", "rate_used", "completed", "failed")


@dataclass(frozen=True, slots=True)
class TenantUsage:
    """One tenant's usage: per queue (``queues``) and summed over them.

    ``rate_used`` sums the queues' current windows (each queue has its own window);
    ``count_damaged`` names the queues where its count of unfinished jobs is damaged
    (``QueueUsage.count_damaged``: their ``queued`` reads 0 until recounted).
    """

    tenant_id: str
    queued: int
    active: int
    held: int
    rate_used: int
    completed: int
    failed: int
    queues: dict[str, QueueUsage] = field(default_factory=dict)
    count_damaged: tuple[str, ...] = ()

    @classmethod
    def total(cls, tenant_id: str, queues: Iterable[QueueUsage]) -> TenantUsage:
        """The usage summed over ``queues`` (one ``QueueUsage`` per queue)."""
        per = {u.queue: u for u in queues}
        sums = {k: sum(getattr(u, k) for u in per.values()) for k in _SUMMED}
        damaged = tuple(name for name, u in per.items() if u.count_damaged)
        return cls(tenant_id=tenant_id, queues=per, count_damaged=damaged, **sums)

    @property
    def empty(self) -> bool:
        """Nothing of the tenant in the queues read: no job, start or total counted,
        no count damaged (a tenant never used, or one whose keys went)."""
        return not self.count_damaged and not any(getattr(self, k) for k in _SUMMED)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["queues"] = {q: u.as_dict() for q, u in self.queues.items()}
        out["count_damaged"] = list(self.count_damaged)
        return out
