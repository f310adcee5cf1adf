"""Alert rules: what is measured, when an alert fires and when it clears."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, cast

from ...errors import ConfigurationError
from ...options import Duration, shown, to_ms, unknown_options_error

__all__ = [
    "GAUGE_METRICS",
    "MAX_WINDOWS",
    "METRICS",
    "WINDOW_METRICS",
    "AlertRule",
    "parse_rule",
]

#: The metrics a rule may watch, with their meaning (docs/advanced-config.md).
METRICS: dict[str, str] = {
    "queue_depth": "jobs waiting to run (the wait set)",
    "oldest_waiting_age_ms": "age of the oldest job waiting to run (ms since it was added)",
    "dlq_growth": "jobs dead-lettered within window_ms",
    "failure_rate": (
        "percentage of runs that failed (retrying or failed for good) among the runs "
        "that ended within window_ms; evaluated from min_samples runs"
    ),
    "breaker_open": "open circuit breakers (breaker_id: that one only, 1 when open)",
    "region_lag_ms": (
        "replication lag of a global queue: the age (ms) of the oldest change the "
        "furthest-behind region has not applied; read from the gauge the global queue "
        "provides on its queues (queue.add_gauge), so it needs one"
    ),
}
#: Metrics read from a gauge a feature provides on the queue (``queue.read_gauge``).
GAUGE_METRICS = frozenset({"region_lag_ms"})
#: Longest window of a rule (outcome buckets are kept that long).
MAX_WINDOW_MS = 3_600_000
#: Metrics a window applies to (``window_ms`` of any other rule is not read).
WINDOW_METRICS = frozenset({"dlq_growth", "failure_rate"})
#: Most distinct windows the rules of one queue may use (``alerts_probe.lua`` reads
#: them in one call).
MAX_WINDOWS = 16
#: The highest value a metric takes (a threshold above it could never be reached);
#: ``breaker_id``: a ``breaker_open`` rule on one breaker (1 while it is open).
_HIGHEST: dict[str, tuple[float, str]] = {
    "failure_rate": (100.0, "failure_rate (a percentage)"),
    "breaker_id": (1.0, "breaker_open with a breaker_id (1 while that breaker is open)"),
}
_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


@dataclass(frozen=True, slots=True)
class AlertRule:
    """One alert rule.

    Attributes:
        name: the rule's name (letters, digits and ``_ . : -``, at most 64): the
            subject of its events.
        metric: what is watched, one of ``METRICS``.
        threshold: the alert fires when the value is at or above it (a finite number
            above 0: every metric is 0 or more, so one at or below 0 would fire at the
            first evaluation and never clear; at most 100 for ``failure_rate``, a
            percentage, and 1 for ``breaker_open`` on one ``breaker_id``: above, it
            could never fire).
        clear_below: the alert clears when the value falls below this (default: the
            threshold; above 0 and at most the threshold). A lower value keeps a value
            hovering at the threshold from firing and clearing over and over.
        window_ms: the window of ``dlq_growth`` and ``failure_rate`` (default 60 s, at
            most 1 h).
        for_ms: the value must stay at or above the threshold this long before the
            alert fires (default 0: at the first evaluation that sees it).
        min_samples: ``failure_rate`` only: fewer runs than this in the window count
            as no failure (default 10).
        breaker_id: ``breaker_open`` only: watch this breaker (1 while open, else 0).
    """

    name: str
    metric: str
    threshold: float
    clear_below: float | None = None
    window_ms: Duration = 60_000
    for_ms: Duration = 0
    min_samples: int = 10
    breaker_id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ConfigurationError(
                f"alert rule name must be 1-64 letters, digits or _ . : -, got {shown(self.name)}"
            )
        where = f"alert rule {self.name!r}"
        if self.metric not in METRICS:
            import difflib

            close = difflib.get_close_matches(str(self.metric), list(METRICS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigurationError(
                f"{where}: unknown metric {shown(self.metric)}{hint}; metrics are "
                f"{', '.join(METRICS)}"
            )
        for attr in ("threshold", "clear_below"):
            v = getattr(self, attr)
            if v is None and attr == "clear_below":
                continue
            finite = isinstance(v, (int, float)) and not isinstance(v, bool)
            if finite:
                try:  # an int beyond any float (10**400) is no usable threshold either
                    finite = math.isfinite(float(v))
                except OverflowError:
                    finite = False
            if not finite:
                raise ConfigurationError(
                    f"{where}: {attr} must be a finite number (an int or float within the "
                    f"range of a float), got {shown(v)}"
                )
            if v <= 0:
                # Every metric is a count, an age, a lag or a percentage: never below 0.
                raise ConfigurationError(
                    f"{where}: {attr} must be above 0, got {shown(v)}: every metric is 0 or more, "
                    "so the alert would "
                    + (
                        "fire at the first evaluation and never clear"
                        if attr == "threshold"
                        else "never clear once fired"
                    )
                )
        if self.clear_below is not None and self.clear_below > self.threshold:
            raise ConfigurationError(
                f"{where}: clear_below ({self.clear_below}) must not be above the threshold "
                f"({self.threshold}), or the alert could never stay fired"
            )
        one = self.metric == "breaker_open" and self.breaker_id is not None
        top = _HIGHEST.get("breaker_id" if one else self.metric)
        if top is not None and self.threshold > top[0]:
            raise ConfigurationError(
                f"{where}: threshold must be at most {top[0]:g} for {top[1]}, got "
                f"{shown(self.threshold)}: the value never goes above it, so the alert "
                "could never fire"
            )
        object.__setattr__(
            self,
            "window_ms",
            to_ms(self.window_ms, f"{where}: window_ms", minimum=1000, maximum=MAX_WINDOW_MS),
        )
        object.__setattr__(self, "for_ms", to_ms(self.for_ms, f"{where}: for_ms"))
        if isinstance(self.min_samples, bool) or not isinstance(self.min_samples, int):
            raise ConfigurationError(f"{where}: min_samples must be an int >= 1")
        if self.min_samples < 1:
            raise ConfigurationError(f"{where}: min_samples must be an int >= 1")
        if self.breaker_id is not None:
            if self.metric != "breaker_open":
                raise ConfigurationError(
                    f"{where}: breaker_id applies to metric 'breaker_open' only"
                )
            from ..breakers.model import check_breaker_id

            try:
                check_breaker_id(self.breaker_id)
            except ConfigurationError as exc:
                # Any other value would name no breaker: the rule could never fire.
                raise ConfigurationError(f"{where}: breaker_id: {exc}") from None

    @property
    def window(self) -> int:
        """``window_ms`` as whole ms (normalised at construction)."""
        return cast(int, self.window_ms)

    @property
    def hold(self) -> int:
        """``for_ms`` as whole ms (normalised at construction)."""
        return cast(int, self.for_ms)

    @property
    def clears_below(self) -> float:
        """The value below which a fired alert clears."""
        return self.threshold if self.clear_below is None else float(self.clear_below)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_FIELDS = [f.name for f in fields(AlertRule)]


def parse_rule(value: AlertRule | Mapping[str, Any], where: str) -> AlertRule:
    """An ``AlertRule`` from one or from a dict of its fields (unknown keys refused with
    a suggestion)."""
    if isinstance(value, AlertRule):
        return value
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"{where} must be an AlertRule or a dict, got {type(value).__name__}"
        )
    bad = [k for k in value if k not in _FIELDS]
    if bad:
        raise unknown_options_error(where, bad, _FIELDS)
    missing = [k for k in ("name", "metric", "threshold") if k not in value]
    if missing:
        raise ConfigurationError(f"{where} needs {', '.join(repr(m) for m in missing)}")
    return AlertRule(**value)
