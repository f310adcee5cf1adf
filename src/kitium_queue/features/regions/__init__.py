"""Multi-region queues: ``GlobalQueueManager`` (the brief's phase 3), with routing,
replication through the outbox and failover fenced by epochs a majority agreed on.

Modules: ``config`` (the configuration), ``manager`` (the façade), ``routing`` (where a
job goes; the tenant protocol), ``record`` / ``election`` / ``topology`` (region records,
votes, leases, the view), ``monitor`` (health, renewals, automatic failover),
``handover`` (``failover_to``), ``replication`` / ``copying`` (the outbox followed per
secondary, sync acknowledgements, catch-up), ``stranded`` (what a former primary never
replicated), ``lanes`` (workers and reports), ``stats``, ``cli``, ``lua`` and the Lua
files. docs/multi-region.md describes the semantics and the guarantees.
"""

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
