"""Effectively-once processing and idempotency windows (``IdempotencyManager``).

See ``manager.py`` and ``docs/effectively-once.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import load_lazily

if TYPE_CHECKING:
    from .manager import WINDOWS, ExecutionResult, IdempotencyManager, derive_key

#: Public names, each imported on first use from the module that defines it.
_LAZY = {
    "WINDOWS": "manager",
    "ExecutionResult": "manager",
    "IdempotencyManager": "manager",
    "derive_key": "manager",
}

__all__ = ["WINDOWS", "ExecutionResult", "IdempotencyManager", "derive_key"]


if not TYPE_CHECKING:  # a type checker sees the names above, and flags any other

    def __getattr__(name: str) -> Any:
        return load_lazily(__name__, __path__, _LAZY, name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
