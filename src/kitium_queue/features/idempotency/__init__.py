"""Effectively-once processing and idempotency windows (``IdempotencyManager``).

See ``manager.py`` and ``docs/effectively-once.md``.
"""

from .manager import WINDOWS, ExecutionResult, IdempotencyManager, derive_key

__all__ = ["WINDOWS", "ExecutionResult", "IdempotencyManager", "derive_key"]
