"""Multi-region queues: ``GlobalQueueManager``, with routing,
replication through the outbox and failover fenced by epochs a majority agreed on.

Modules: ``config`` (the configuration), ``manager`` (the façade), ``routing`` (where a
job goes; the tenant protocol), ``record`` / ``election`` / ``topology`` (region records,
votes, leases, the view), ``monitor`` (health, renewals, automatic failover),
``handover`` (``failover_to``), ``replication`` / ``copying`` (the outbox followed per
secondary, sync acknowledgements, catch-up), ``stranded`` (what a former primary never
replicated), ``lanes`` (workers and reports), ``stats``, ``cli``, ``lua`` and the Lua
files. docs/multi-region.md describes the semantics and the guarantees.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import load_lazily

if TYPE_CHECKING:
    from .advanced import enable_from_advanced
    from .config import FailoverConfig, GlobalQueueConfig, RegionConfig, ReplicationConfig
    from .errors import (
        FailoverError,
        RegionNotAllowedError,
        RegionUnavailableError,
        ReplicationTimeoutError,
    )
    from .manager import GlobalQueueManager
    from .monitor import Failover
    from .routing import AllowedRegions, TenantRegionMap
    from .stats import GlobalStats, RegionStats
    from .stranded import StrandedJob

#: Public names, each imported on first use from the module that defines it.
_LAZY = {
    "enable_from_advanced": "advanced",
    "FailoverConfig": "config",
    "GlobalQueueConfig": "config",
    "RegionConfig": "config",
    "ReplicationConfig": "config",
    "FailoverError": "errors",
    "RegionNotAllowedError": "errors",
    "RegionUnavailableError": "errors",
    "ReplicationTimeoutError": "errors",
    "GlobalQueueManager": "manager",
    "Failover": "monitor",
    "AllowedRegions": "routing",
    "TenantRegionMap": "routing",
    "GlobalStats": "stats",
    "RegionStats": "stats",
    "StrandedJob": "stranded",
}

__all__ = [
    "AllowedRegions",
    "Failover",
    "FailoverConfig",
    "FailoverError",
    "GlobalQueueConfig",
    "GlobalQueueManager",
    "GlobalStats",
    "RegionConfig",
    "RegionNotAllowedError",
    "RegionStats",
    "RegionUnavailableError",
    "ReplicationConfig",
    "ReplicationTimeoutError",
    "StrandedJob",
    "TenantRegionMap",
    "enable_from_advanced",
]


if not TYPE_CHECKING:  # a type checker sees the names above, and flags any other

    def __getattr__(name: str) -> Any:
        return load_lazily(__name__, __path__, _LAZY, name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
