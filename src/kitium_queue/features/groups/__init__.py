"""FIFO message groups: strict order per group, fair across groups.

``FIFOQueueManager(queue)`` enables them; ``add_job(..., message_group_id="customer-42")``
(or ``manager.add_to_group``) puts a job in a group. See ``manager.py`` and
``docs/groups.md``.
"""

from .manager import (
    FIFOQueueManager,
    GroupConfig,
    GroupPage,
    GroupRateLimit,
    GroupTurn,
    MessageGroupStats,
    check_group_id,
)

__all__ = [
    "FIFOQueueManager",
    "GroupConfig",
    "GroupPage",
    "GroupRateLimit",
    "GroupTurn",
    "MessageGroupStats",
    "check_group_id",
]
