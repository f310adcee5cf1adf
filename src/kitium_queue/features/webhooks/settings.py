"""``WebhookManager``'s numeric options, checked: the delivery knobs, the two bounds of
the delivery history (``history_max`` records per endpoint, ``history_ttl_s`` seconds)
and the two of the webhook DLQ (``dead_max`` dead deliveries per endpoint, ``dead_ttl_s``
seconds; ``None`` for no bound).

Each is refused at construction with the option named. A TTL above ten years is taken
for milliseconds given as seconds (7 days in ms is 604,800,000) and refused too: the
script would have kept such records for ages (it clamps a TTL to 2**50 s).
"""

from __future__ import annotations

from typing import Any

from ...errors import ConfigurationError
from ...limits import MAX_DELAY_MS
from ...options import shown

__all__ = [
    "DEAD_MAX",
    "DEAD_MAX_LIMIT",
    "DEAD_TTL_S",
    "HISTORY_MAX",
    "HISTORY_MAX_LIMIT",
    "HISTORY_TTL_S",
    "HISTORY_TTL_S_LIMIT",
    "check_dead",
    "check_history",
    "check_numbers",
]

#: Default: the delivery records kept per endpoint (the newest, by creation).
HISTORY_MAX = 10_000
#: Most ``history_max`` may be (an index of a million entries is about 120 MB).
HISTORY_MAX_LIMIT = 1_000_000
#: Default: how long a delivered or given-up record is kept (s): 7 days.
HISTORY_TTL_S = 7 * 86_400
#: Most ``history_ttl_s`` may be: ten years, the longest delay of the queue.
HISTORY_TTL_S_LIMIT = MAX_DELAY_MS // 1000
#: Default: the dead deliveries kept per endpoint in the webhook DLQ (the newest dead).
DEAD_MAX = 10_000
#: Most ``dead_max`` may be (each dead delivery keeps its record, about 1.3 KB in all).
DEAD_MAX_LIMIT = 1_000_000
#: Default: no age bound on dead deliveries (kept until replayed, or past ``dead_max``).
DEAD_TTL_S: int | None = None


def _bounded(value: Any, what: str, lo: int, hi: int | None, unbound: str = "") -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < lo
        or (hi is not None and value > hi)
    ):
        span = f">= {lo}" if hi is None else f"from {lo:,} to {hi:,}"
        raise ConfigurationError(f"{what} must be an int {span}{unbound}, got {shown(value)}")
    return value


def check_history(
    history_max: Any, history_ttl_s: Any, where: str = "WebhookManager"
) -> tuple[int, int]:
    """``(history_max, history_ttl_s)`` once both are ints in range; ConfigurationError
    naming ``where`` otherwise."""
    return (
        _bounded(history_max, f"{where} history_max", 1, HISTORY_MAX_LIMIT),
        _bounded(history_ttl_s, f"{where} history_ttl_s", 1, HISTORY_TTL_S_LIMIT),
    )


def check_dead(
    dead_max: Any, dead_ttl_s: Any, where: str = "WebhookManager"
) -> tuple[int | None, int | None]:
    """``(dead_max, dead_ttl_s)`` once each is None (no bound) or an int in range
    (``dead_max`` 1 to 1,000,000, ``dead_ttl_s`` 1 s to 10 years); ConfigurationError
    naming ``where`` otherwise."""
    none = " (or None: no bound)"
    return (
        None
        if dead_max is None
        else _bounded(dead_max, f"{where} dead_max", 1, DEAD_MAX_LIMIT, none),
        None
        if dead_ttl_s is None
        else _bounded(dead_ttl_s, f"{where} dead_ttl_s", 1, HISTORY_TTL_S_LIMIT, none),
    )


def check_numbers(**values: Any) -> None:
    """The delivery knobs of ``WebhookManager`` (name=value): ints, at least each one's
    minimum; ``batch`` at most 1000, ``busy_share`` in (0, 1]."""
    lows = {"claim_idle_ms": 10, "lease_ms": 100}
    for what, v in values.items():
        if what == "busy_share":
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
                raise ConfigurationError("WebhookManager busy_share must be in (0, 1]")
            continue
        _bounded(v, f"WebhookManager {what}", lows.get(what, 1), 1000 if what == "batch" else None)
