"""``AdvancedQueueConfig(global_queue=...)``: the section's regions as a
``GlobalQueueManager`` for the queue the configuration is applied to."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import check_config
from .manager import LAG_GAUGE, GlobalQueueManager

if TYPE_CHECKING:
    from ...queue import JobQueue

__all__ = ["enable_from_advanced"]


def enable_from_advanced(queue: JobQueue, section: Any) -> GlobalQueueManager:
    """A ``GlobalQueueManager`` named like ``queue``, with its key prefix, over the
    section's regions (``queue.advanced.global_queue``), its configuration checked now.

    It is not initialized: ``await queue.advanced.global_queue.initialize()`` connects
    to the regions and agrees on the primary. The section's priorities count from 0
    (lower first); the manager's from 1 (0 there means never promoted), so each is
    raised by one. ``replication`` and ``failover_timeout_ms`` become the manager's
    ``replication.enabled`` and ``failover.timeout_ms``. The queue gets the gauge
    ``region_lag_ms`` (the manager's ``region_lag_ms()``) for alert rules.
    """
    config: dict[str, Any] = {
        "name": queue.name,
        "regions": [
            {
                "region": r.region,
                "redis": r.redis,
                "is_primary": r.is_primary,
                "priority": r.priority + 1,
            }
            for r in section.regions
        ],
        "replication": {"enabled": bool(section.replication)},
        "failover": {"enabled": True, "timeout_ms": section.failover_timeout_ms},
        "queue_options": {"prefix": queue.keys.prefix},
    }
    check_config(config)
    manager = GlobalQueueManager(config)
    # Alert rules on region_lag_ms of the configured queue read the manager's lag (None
    # until it is initialized).
    queue.add_gauge(LAG_GAUGE, manager.region_lag_ms)
    return manager
