"""Compliance: retention periods, redaction of named payload fields and erasure by
subject (``ComplianceManager``); see ``docs/compliance.md``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import load_lazily

if TYPE_CHECKING:
    from .manager import FEATURE, ComplianceManager, ErasureReport, subject_digest
    from .redaction import PathRedactor

#: Public names, each imported on first use from the module that defines it.
_LAZY = {
    "FEATURE": "manager",
    "ComplianceManager": "manager",
    "ErasureReport": "manager",
    "subject_digest": "manager",
    "PathRedactor": "redaction",
}

__all__ = ["FEATURE", "ComplianceManager", "ErasureReport", "PathRedactor", "subject_digest"]


if not TYPE_CHECKING:  # a type checker sees the names above, and flags any other

    def __getattr__(name: str) -> Any:
        return load_lazily(__name__, __path__, _LAZY, name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
