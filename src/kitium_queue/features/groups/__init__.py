"""FIFO message groups: strict order per group, fair across groups.

``FIFOQueueManager(queue)`` enables them; ``add_job(..., message_group_id="customer-42")``
(or ``manager.add_to_group``) puts a job in a group. See ``manager.py`` and
``docs/groups.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import load_lazily

if TYPE_CHECKING:
    from .manager import (
        FIFOQueueManager,
        GroupConfig,
        GroupPage,
        GroupRateLimit,
        GroupTurn,
        MessageGroupStats,
        check_group_id,
    )

#: Public names, each imported on first use from the module that defines it.
_LAZY = {
    "FIFOQueueManager": "manager",
    "GroupConfig": "manager",
    "GroupPage": "manager",
    "GroupRateLimit": "manager",
    "GroupTurn": "manager",
    "MessageGroupStats": "manager",
    "check_group_id": "manager",
}

__all__ = [
    "FIFOQueueManager",
    "GroupConfig",
    "GroupPage",
    "GroupRateLimit",
    "GroupTurn",
    "MessageGroupStats",
    "check_group_id",
]


if not TYPE_CHECKING:  # a type checker sees the names above, and flags any other

    def __getattr__(name: str) -> Any:
        return load_lazily(__name__, __path__, _LAZY, name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
