"""``WebhookManager``'s numeric options, checked: the delivery knobs and the two bounds of
the delivery history (``history_max`` records per endpoint, ``history_ttl_s`` seconds).

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
    "HISTORY_MAX",
    "HISTORY_MAX_LIMIT",
    "HISTORY_TTL_S",
    "HISTORY_TTL_S_LIMIT",
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


def _bounded(value: Any, what: str, lo: int, hi: int | None) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < lo
        or (hi is not None and value > hi)
    ):
        span = f">= {lo}" if hi is None else f"from {lo:,} to {hi:,}"
        raise ConfigurationError(f"{what} must be an int {span}, got {shown(value)}")
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
