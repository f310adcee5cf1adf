"""Alert rules evaluated by a leader-only service (``AlertManager``, ``AlertRule``);
see ``docs/advanced-config.md`` (monitoring)."""

from __future__ import annotations

from .manager import BUCKET_MS, FEATURE, AlertManager, AlertState, AlertTransition
from .rules import METRICS, AlertRule, parse_rule

__all__ = [
    "BUCKET_MS",
    "FEATURE",
    "METRICS",
    "AlertManager",
    "AlertRule",
    "AlertState",
    "AlertTransition",
    "parse_rule",
]
