"""Workflows: DAGs of jobs with dependencies, data passing and failure policies.

``JobChainManager(queue)`` enables them on a queue; see ``docs/workflows.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import load_lazily

if TYPE_CHECKING:
    from .manager import JobChainManager
    from .model import ParentResult, StepStatus, WorkflowStatus, WorkflowStep, WorkflowSummary

#: Public names, each imported on first use from the module that defines it.
_LAZY = {
    "JobChainManager": "manager",
    "ParentResult": "model",
    "StepStatus": "model",
    "WorkflowStatus": "model",
    "WorkflowStep": "model",
    "WorkflowSummary": "model",
}

__all__ = [
    "JobChainManager",
    "ParentResult",
    "StepStatus",
    "WorkflowStatus",
    "WorkflowStep",
    "WorkflowSummary",
]


if not TYPE_CHECKING:  # a type checker sees the names above, and flags any other

    def __getattr__(name: str) -> Any:
        return load_lazily(__name__, __path__, _LAZY, name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
