"""Circuit breakers: definitions, their validation, and what a breaker reports."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ...enums import CircuitBreakerState
from ...errors import ConfigurationError
from ...keys import check_key_part
from ...limits import MAX_DELAY_MS, clip
from ...options import check_text, to_int, to_ms

__all__ = [
    "MAX_BREAKER_ID",
    "MAX_PROBES",
    "BreakerConfig",
    "BreakerStats",
    "BreakerTransition",
    "FailureThreshold",
    "check_breaker_id",
    "check_threshold",
    "parse_config",
]

#: Longest breaker id (it is part of key names and of the blocker of held jobs).
MAX_BREAKER_ID = 128
#: Most probes a half-open breaker lets through at once.
MAX_PROBES = 1000
_MAX_JOB_NAME = 256
_MAX_MIN_REQUESTS = 1_000_000_000
#: Largest time or count a breaker's record holds (the scripts' MAX_MS).
_MAX_MS = 1_125_899_906_842_624


def check_breaker_id(value: Any) -> str:
    """``value`` if it is a valid breaker id, else ``ConfigurationError`` saying why."""
    if isinstance(value, str) and len(value) > MAX_BREAKER_ID:
        raise ConfigurationError(
            f"breaker id {clip(repr(value), 60)} is longer than {MAX_BREAKER_ID} characters"
        )
    return check_key_part(value, "breaker id")


@dataclass(frozen=True, slots=True)
class FailureThreshold:
    """When a closed breaker opens: at least ``min_requests`` outcomes in the window,
    and failures making up at least ``percentage`` % of them."""

    percentage: float = 50.0
    min_requests: int = 10


#: The threshold of a config that sets none (by identity: the manager's own default,
#: ``default_failure_threshold``, applies to such a config instead).
_DEFAULT_THRESHOLD = FailureThreshold()


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """A circuit breaker's definition (``CircuitBreakerManager.create_breaker``).

    Attributes:
        id: the breaker's id (letters, digits and ``-_.:#/+``, at most 128 characters).
        job_name: jobs of this name are bound to the breaker (held while it is open),
            as are jobs added with ``circuit_breaker_id=id``. None: only those.
        failure_threshold: ``FailureThreshold`` (or a dict with ``percentage`` and
            ``min_requests``); when not given, the manager's default (50 % of at
            least 10 outcomes unless ``default_failure_threshold`` says otherwise).
        timeout: ms the breaker stays open before it lets probes through (half-open).
        window: length of the rolling window outcomes are counted in (ms, >= 1000).
        half_open_probes: how many runs or calls a half-open breaker lets through;
            when that many succeed it closes, when one fails it opens again.
        probe_timeout: ms a probe may take to report; a probe still out after it
            counts as failed (the breaker opens again). Set it above the longest run
            of a bound job.
    """

    id: str
    job_name: str | None = None
    failure_threshold: FailureThreshold = field(default_factory=lambda: _DEFAULT_THRESHOLD)
    timeout: int = 60_000
    window: int = 60_000
    half_open_probes: int = 1
    probe_timeout: int = 60_000

    def to_dict(self) -> dict[str, Any]:
        """The definition as plain data (what ``--json`` prints)."""
        return {
            "id": self.id,
            "job_name": self.job_name,
            "failure_threshold": {
                "percentage": self.failure_threshold.percentage,
                "min_requests": self.failure_threshold.min_requests,
            },
            "timeout": self.timeout,
            "window": self.window,
            "half_open_probes": self.half_open_probes,
            "probe_timeout": self.probe_timeout,
        }


_CONFIG_KEYS = tuple(f.name for f in fields(BreakerConfig))


def check_threshold(value: Any) -> FailureThreshold:
    """A checked ``FailureThreshold`` from one or from a dict (``percentage``,
    ``min_requests``)."""
    return _threshold(value)


def _threshold(value: Any) -> FailureThreshold:
    if isinstance(value, FailureThreshold):
        pct, mn = value.percentage, value.min_requests
    elif isinstance(value, Mapping):
        extra = set(value) - {"percentage", "min_requests"}
        if extra:
            raise ConfigurationError(
                f"failure_threshold: unknown key(s) {sorted(map(str, extra))}; "
                "use 'percentage' and 'min_requests'"
            )
        pct = value.get("percentage", 50.0)
        mn = value.get("min_requests", 10)
    else:
        raise ConfigurationError(
            "failure_threshold must be a FailureThreshold or a dict with 'percentage' and "
            f"'min_requests', got {type(value).__name__}"
        )
    if isinstance(pct, bool) or not isinstance(pct, (int, float)) or not 0 < pct <= 100:
        raise ConfigurationError(
            f"failure_threshold.percentage must be a number in (0, 100], got {clip(repr(pct), 60)}"
        )
    n = to_int(mn, "failure_threshold.min_requests", minimum=1, maximum=_MAX_MIN_REQUESTS)
    return FailureThreshold(float(pct), n)


def parse_config(
    config: BreakerConfig | Mapping[str, Any], default: FailureThreshold | None = None
) -> BreakerConfig:
    """A checked ``BreakerConfig`` from one or from a dict of its fields; ``default``:
    the threshold of a config that sets none."""
    fallback = default if default is not None else FailureThreshold()
    if isinstance(config, BreakerConfig):
        raw: dict[str, Any] = {k: getattr(config, k) for k in _CONFIG_KEYS}
        if raw["failure_threshold"] is _DEFAULT_THRESHOLD:
            raw["failure_threshold"] = fallback
    elif isinstance(config, Mapping):
        raw = dict(config)
        unknown = set(raw) - set(_CONFIG_KEYS)
        if unknown:
            raise ConfigurationError(
                f"unknown breaker setting(s) {sorted(map(str, unknown))}; "
                f"settings are {', '.join(_CONFIG_KEYS)}"
            )
        if "id" not in raw:
            raise ConfigurationError("a breaker needs an 'id'")
    else:
        raise ConfigurationError(
            f"a breaker config is a BreakerConfig or a dict, got {type(config).__name__}"
        )
    job_name = raw.get("job_name")
    if job_name is not None:  # a name a job can have: 1-256 characters, no control ones
        job_name = check_text(job_name, "breaker job_name", max_len=_MAX_JOB_NAME)
    return BreakerConfig(
        id=check_breaker_id(raw["id"]),
        job_name=job_name,
        failure_threshold=_threshold(raw.get("failure_threshold", fallback)),
        timeout=to_ms(
            raw.get("timeout", 60_000), "breaker timeout", minimum=1, maximum=MAX_DELAY_MS
        ),
        window=to_ms(
            raw.get("window", 60_000), "breaker window", minimum=1000, maximum=MAX_DELAY_MS
        ),
        half_open_probes=to_int(
            raw.get("half_open_probes", 1), "half_open_probes", minimum=1, maximum=MAX_PROBES
        ),
        probe_timeout=to_ms(
            raw.get("probe_timeout", 60_000), "probe_timeout", minimum=1, maximum=MAX_DELAY_MS
        ),
    )


@dataclass(frozen=True, slots=True)
class BreakerStats:
    """A breaker's state and its counts, as read (atomically) from Redis.

    Attributes:
        config: its definition.
        state: closed, open or half-open.
        since_ms: when it entered that state (ms since the epoch, Redis clock).
        open_until_ms: open: when it lets probes through; else the last such time.
        next_probe_ms: when the next probe may start: ``open_until_ms`` while open, now
            (``since_ms``) while half-open with a probe place free, the probe deadline
            while half-open with every probe out; None while closed.
        requests: outcomes counted in the rolling window (closed only; reset on every
            change of state).
        failures: failures among them.
        failure_rate: ``failures / requests`` in percent (0 with no requests).
        probes_admitted: probes let through in this half-open period.
        probes_succeeded: probes that succeeded in it.
        probe_deadline_ms: when the probes out must have reported (0: none out).
        held_jobs: bound jobs parked (status ``pending``) behind the breaker.
        transitions: state changes so far.
        reason: why the last change happened.
        created_ms: when the breaker was created.
        damaged: what is wrong with the breaker's keys in Redis and how to repair them
            ('' when nothing). A breaker whose record holds another Redis type reads as
            closed with its defaults: its jobs run as if it were not there.
    """

    config: BreakerConfig
    state: CircuitBreakerState
    since_ms: int
    open_until_ms: int
    next_probe_ms: int | None
    requests: int
    failures: int
    failure_rate: float
    probes_admitted: int
    probes_succeeded: int
    probe_deadline_ms: int
    held_jobs: int
    transitions: int
    reason: str
    created_ms: int
    damaged: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json`` and logs."""
        return {
            **self.config.to_dict(),
            "state": str(self.state),
            "since_ms": self.since_ms,
            "open_until_ms": self.open_until_ms,
            "next_probe_ms": self.next_probe_ms,
            "requests": self.requests,
            "failures": self.failures,
            "failure_rate": self.failure_rate,
            "probes_admitted": self.probes_admitted,
            "probes_succeeded": self.probes_succeeded,
            "probe_deadline_ms": self.probe_deadline_ms,
            "held_jobs": self.held_jobs,
            "transitions": self.transitions,
            "reason": self.reason,
            "created_ms": self.created_ms,
            "damaged": self.damaged,
        }

    @classmethod
    def parse(cls, breaker_id: str, reply: Any) -> BreakerStats:
        """From the breaker script's view: ``ok st since until po pok pdl R F held probes
        n why jn pct min to win pr pto ca damaged``, or ``damaged <what>`` (values read
        from Redis are untrusted: a damaged one reads as its default)."""
        v = [_text(x) for x in reply]
        if v and v[0] == "damaged":
            return cls.unreadable(breaker_id, v[1] if len(v) > 1 else "record damaged")
        v += [""] * (22 - len(v))
        n = [_int(x) for x in v]
        state = CircuitBreakerState(v[1]) if v[1] in _STATES else CircuitBreakerState.CLOSED
        try:
            pct = float(v[14])
        except ValueError:
            pct = 50.0
        config = BreakerConfig(
            id=breaker_id,
            job_name=v[13] or None,
            failure_threshold=FailureThreshold(pct, max(1, n[15])),
            timeout=n[16],
            window=n[17],
            half_open_probes=n[18],
            probe_timeout=n[19],
        )
        requests, failures = n[7], n[8]
        since, until, po, pdl = n[2], n[3], n[4], n[6]
        if state is CircuitBreakerState.OPEN:
            next_probe: int | None = until
        elif state is CircuitBreakerState.HALF_OPEN:
            next_probe = since if po < config.half_open_probes else pdl
        else:
            next_probe = None
        return cls(
            config=config,
            state=state,
            since_ms=since,
            open_until_ms=until,
            next_probe_ms=next_probe,
            requests=requests,
            failures=failures,
            failure_rate=round(100.0 * failures / requests, 3) if requests else 0.0,
            probes_admitted=po,
            probes_succeeded=n[5],
            probe_deadline_ms=pdl,
            held_jobs=n[9],
            transitions=n[11],
            reason=v[12],
            created_ms=n[20],
            damaged=clip(v[21], 1000),
        )

    @classmethod
    def unreadable(cls, breaker_id: str, damaged: str) -> BreakerStats:
        """A breaker whose record cannot be read (``damaged`` says why): closed, with
        the default definition, as its jobs see it."""
        return cls(
            config=BreakerConfig(id=breaker_id),
            state=CircuitBreakerState.CLOSED,
            since_ms=0,
            open_until_ms=0,
            next_probe_ms=None,
            requests=0,
            failures=0,
            failure_rate=0.0,
            probes_admitted=0,
            probes_succeeded=0,
            probe_deadline_ms=0,
            held_jobs=0,
            transitions=0,
            reason="",
            created_ms=0,
            damaged=clip(damaged, 1000),
        )


_STATES = {s.value for s in CircuitBreakerState}


def _int(x: str) -> int:
    """A whole number read from Redis, within 0 .. MAX_MS (0 when it is none)."""
    try:
        n = int(x)
    except ValueError:
        return 0
    return n if 0 <= n <= _MAX_MS else 0


def _text(x: Any) -> str:
    return x.decode("utf-8", "backslashreplace") if isinstance(x, bytes) else str(x)


@dataclass(frozen=True, slots=True)
class BreakerTransition:
    """One state change, from the breaker's log (``CircuitBreakerManager.history``) or
    a ``breaker-state`` feature event.

    Attributes:
        entry_id: id of the log entry (a stream id: increasing).
        breaker_id: the breaker.
        from_state / to_state: ``closed``, ``open``, ``half-open``; ``to_state`` is
            ``removed`` when the breaker was removed.
        reason: why it changed.
        at_ms: when (Redis clock).
    """

    entry_id: str
    breaker_id: str
    from_state: str
    to_state: str
    reason: str
    at_ms: int

    @classmethod
    def parse(cls, entry_id: Any, raw: Mapping[Any, Any]) -> BreakerTransition:
        # Entries written by another client are untrusted: any bytes, any length.
        f = {_text(k): _text(v) for k, v in raw.items()}
        return cls(
            clip(_text(entry_id), 60),
            clip(f.get("b", ""), MAX_BREAKER_ID + 20),
            clip(f.get("from", ""), 20),
            clip(f.get("to", ""), 20),
            clip(f.get("why", ""), 500),
            _int(f.get("at", "0")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "entry_id": self.entry_id,
            "breaker_id": self.breaker_id,
            "from": self.from_state,
            "to": self.to_state,
            "reason": self.reason,
            "at_ms": self.at_ms,
        }
