"""Workflows: DAGs of jobs with dependencies, data passing and failure policies.

``JobChainManager(queue)`` enables them on a queue; see ``docs/workflows.md``.
"""

from .manager import JobChainManager
from .model import ParentResult, StepStatus, WorkflowStatus, WorkflowStep, WorkflowSummary

__all__ = [
    "JobChainManager",
    "ParentResult",
    "StepStatus",
    "WorkflowStatus",
    "WorkflowStep",
    "WorkflowSummary",
]
