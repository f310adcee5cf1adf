"""Alert rules evaluated by a leader-only service (``AlertManager``, ``AlertRule``);
see ``docs/advanced-config.md`` (monitoring)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import load_lazily

if TYPE_CHECKING:
    from .manager import BUCKET_MS, FEATURE, AlertManager, AlertState, AlertTransition
    from .rules import METRICS, AlertRule, parse_rule

#: Public names, each imported on first use from the module that defines it.
_LAZY = {
    "BUCKET_MS": "manager",
    "FEATURE": "manager",
    "AlertManager": "manager",
    "AlertState": "manager",
    "AlertTransition": "manager",
    "METRICS": "rules",
    "AlertRule": "rules",
    "parse_rule": "rules",
}

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


if not TYPE_CHECKING:  # a type checker sees the names above, and flags any other

    def __getattr__(name: str) -> Any:
        return load_lazily(__name__, __path__, _LAZY, name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
