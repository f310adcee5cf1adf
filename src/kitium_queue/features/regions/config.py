"""The configuration of a multi-region queue: ``GlobalQueueManager.initialize(config)``.

Every section is a frozen dataclass that also accepts a plain dict with snake_case keys
(unknown keys are refused with a suggestion). ``check_config`` validates the whole and
derives the timings (lease, health-check interval) from ``failover.timeout_ms``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ...errors import ConfigurationError
from ...options import coerce, shown, to_int, to_ms

__all__ = [
    "DEFAULT_NAME",
    "DEFAULT_PRIORITY",
    "FailoverConfig",
    "GlobalQueueConfig",
    "RegionConfig",
    "ReplicationConfig",
    "check_config",
    "check_region_name",
]

#: The queue name when the configuration gives none (the documented examples give none).
DEFAULT_NAME = "global-queue"
#: The promotion priority of a region that gives none: after every numbered region.
DEFAULT_PRIORITY = 100
_REGION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_MAX_REGIONS = 16
#: JobQueue arguments a region lane may not take from ``queue_options``.
_LANE_OWNED = ("name", "redis")


def check_region_name(value: Any, what: str = "region") -> str:
    """A region name: 1-63 letters, digits, ``.``, ``_`` or ``-``, starting with a letter
    or digit (it becomes part of key names, consumer-group names and job ids)."""
    if not isinstance(value, str) or not _REGION.fullmatch(value):
        raise ConfigurationError(
            f"{what} must be 1-63 letters, digits, '.', '_' or '-' starting with a letter "
            f"or digit (e.g. 'eu-west-1'), got {shown(value)}"
        )
    return value


@dataclass(frozen=True)
class RegionConfig:
    """One region: an independent Redis deployment (a server, Sentinel or Cluster).

    Attributes:
        region: its name (``"eu-west-1"``).
        redis: its connection, as ``JobQueue(redis=...)`` takes it.
        is_primary: the region that starts as the primary when the regions are new.
            Afterwards the epoch records in the regions decide (a failover survives the
            restart of every process). At most one region sets it; with none, the first.
        priority: the order of promotion: the reachable region with the lowest number
            becomes the primary on failover (1 before 2; default 100, ties in
            configuration order). 0: never promoted (a witness region that votes and
            keeps copies, e.g. the third Redis that lets two regions fail over).
    """

    region: str
    redis: Any
    is_primary: bool = False
    priority: int = DEFAULT_PRIORITY


@dataclass(frozen=True)
class ReplicationConfig:
    """How jobs reach the other regions.

    Attributes:
        enabled: replicate at all (False: each failover starts from what the new primary
            holds; only for queues whose jobs may be lost).
        mode: ``"async"`` (default): ``add_job`` returns once the primary stored the job,
            and a replicator carries the primary's outbox to every secondary (lag in
            ``get_global_stats``); ``"sync"``: ``add_job`` returns only once ``min_acks``
            other regions stored the job too (``ReplicationTimeoutError`` otherwise).
        min_acks: sync mode: how many other regions must store a job before ``add_job``
            returns. Default: the fewest that make every acknowledged job survive any
            failover a majority can agree on (regions - majority, at least 1).
        ack_timeout_ms: sync mode: how long ``add_job`` waits for those acknowledgements.
        batch: outbox entries applied per call by the replicator (1..500).
        linger_ms: when fewer than ``batch`` entries are waiting, how long the replicator
            waits for more before applying them (0: at once). A few ms of lag buy much
            fewer calls under a steady trickle of jobs.
        index_retention_ms: how long a secondary remembers which copies it holds by age,
            so that a new primary can fetch, from its peers, jobs it had not received
            yet (keep it above the replication lag you expect in the worst case).
        schedule_sync_ms: how often the schedules of the primary are copied to the
            secondaries.
    """

    enabled: bool = True
    mode: str = "async"
    min_acks: int | None = None
    ack_timeout_ms: int = 1000
    batch: int = 200
    linger_ms: int = 5
    index_retention_ms: int = 600_000
    schedule_sync_ms: int = 5_000


@dataclass(frozen=True)
class FailoverConfig:
    """When and how the primary changes.

    Attributes:
        enabled: automatic failover (``failover_to`` works either way).
        timeout_ms: the primary is replaced once it has been unreachable this long.
        lease_ms: how long a majority's grant lets the primary take work without a
            renewal (default ``timeout_ms // 2``; below ``timeout_ms``). A primary cut
            off from the majority stops taking work within this time, before any other
            region may be promoted.
        check_interval_ms: health checks of every region (default ``timeout_ms // 10``,
            between 20 and 250 ms).
        drain_timeout_ms: ``failover_to`` with a reachable primary: how long the jobs
            running there may take to finish, and the rest be replicated, before the
            switch (default ``timeout_ms // 2``; below ``timeout_ms``, so that no other
            process's automatic failover steps in meanwhile).
        handover_wait_ms: how long ``add_job`` / ``add_jobs`` wait, when the primary
            they wrote to has stepped down for a planned handover (``failover_to``, in
            any process), for a primary to serve again, then add there (nothing was
            written by the refused call). Default ``timeout_ms``; 0: raise
            ``FencedError`` at once.
    """

    enabled: bool = True
    timeout_ms: int = 5000
    lease_ms: int | None = None
    check_interval_ms: int | None = None
    drain_timeout_ms: int | None = None
    handover_wait_ms: int | None = None


@dataclass(frozen=True)
class GlobalQueueConfig:
    """The configuration ``GlobalQueueManager.initialize`` takes.

    Attributes:
        name: the queue's name (the same in every region). Default ``"global-queue"``.
        regions: the regions (``RegionConfig`` or dicts), two or more.
        replication: ``ReplicationConfig`` or dict.
        failover: ``FailoverConfig`` or dict.
        workers: which jobs this process's workers run: ``"primary"`` (default): the
            jobs of the primary, wherever it is (workers follow it on failover), and the
            jobs pinned to any region; ``"own"``: only the jobs of ``own_region``: those
            pinned to it, and the primary's while it is the primary.
        own_region: this process's region (with ``workers="own"``).
        allowed_regions: where each tenant's jobs may go: an object with
            ``allowed_regions_for(tenant_id)`` (sync or async; ``None`` = anywhere), or
            such a function. See ``routing.AllowedRegions``.
        tenants: the same from the multi-tenancy feature: a ``TenantRegistry`` or an
            ``AccessControlManager`` (each tenant's ``allowed_regions``; empty = any
            region; an unknown tenant's jobs are refused). Give this or
            ``allowed_regions``, not both.
        notify: objects with ``async send_event(WebhookEvent)`` (a ``WebhookManager``)
            that hear of every failover this process carries out.
        queue_options: ``JobQueue`` arguments every region's queues get (``prefix``,
            ``default_job_options``, ``retry``, ``dlq``, ``settings``, ``worker``, ...).
        background: run the health checks, leases, automatic failover and replication
            in this process (default True; every process that does shares the work, the
            replication one at a time). False: a short-lived script that only adds jobs
            or reads (another process must keep the primary's lease renewed).
    """

    regions: Sequence[RegionConfig | Mapping[str, Any]] = ()
    name: str = DEFAULT_NAME
    replication: ReplicationConfig | Mapping[str, Any] | None = None
    failover: FailoverConfig | Mapping[str, Any] | None = None
    workers: str = "primary"
    own_region: str | None = None
    allowed_regions: Any = None
    tenants: Any = None
    notify: Sequence[Any] = ()
    queue_options: Mapping[str, Any] = field(default_factory=dict)
    background: bool = True


@dataclass(frozen=True)
class Checked:
    """A validated configuration with every derived timing filled in."""

    name: str
    regions: tuple[RegionConfig, ...]
    primary: str
    replication: ReplicationConfig
    failover: FailoverConfig
    lease_ms: int
    check_interval_ms: int
    min_acks: int
    majority: int
    workers: str
    own_region: str | None
    allowed_regions: Any
    notify: tuple[Any, ...]
    queue_options: dict[str, Any]
    background: bool

    def region(self, name: str) -> RegionConfig:
        for r in self.regions:
            if r.region == name:
                return r
        raise ConfigurationError(
            f"unknown region {shown(name)}; the regions are "
            f"{', '.join(r.region for r in self.regions)}"
        )

    @property
    def names(self) -> list[str]:
        return [r.region for r in self.regions]


def _region(value: Any, n: int) -> RegionConfig:
    r = coerce(RegionConfig, value, f"regions[{n}]")
    check_region_name(r.region, f"regions[{n}].region")
    if not isinstance(r.is_primary, bool):
        raise ConfigurationError(f"regions[{n}].is_primary must be True or False")
    prio = to_int(r.priority, f"regions[{n}].priority", minimum=0, maximum=1_000_000)
    if r.redis is None:
        raise ConfigurationError(f"regions[{n}] ({r.region}) needs redis=")
    if isinstance(r.redis, str) and (not r.redis.strip() or not r.redis.isprintable()):
        raise ConfigurationError(
            f"regions[{n}] ({r.region}): redis= must be a URL of printable text, got "
            f"{shown(r.redis)}"
        )
    if not isinstance(r.redis, (str, Mapping)) and not hasattr(r.redis, "execute_command"):
        raise ConfigurationError(
            f"regions[{n}] ({r.region}): redis= must be a URL, a dict of connection options "
            f"or a redis.asyncio client, got {type(r.redis).__name__}"
        )
    return replace(r, priority=prio)


def check_config(config: GlobalQueueConfig | Mapping[str, Any]) -> Checked:
    """Validate ``config``; raises ``ConfigurationError`` saying what is wrong."""
    from ...keys import MAX_KEY_PART, check_key_part

    if isinstance(config, Mapping) and "regions" not in config:
        raise ConfigurationError("the global queue configuration needs regions=[...]")
    cfg = coerce(GlobalQueueConfig, config, "global queue")
    check_key_part(cfg.name, "queue name", max_len=MAX_KEY_PART - 50)
    if isinstance(cfg.regions, (str, bytes, Mapping)) or not isinstance(cfg.regions, Sequence):
        raise ConfigurationError("regions must be a list of regions (RegionConfig or dicts)")
    regions = tuple(_region(r, n) for n, r in enumerate(cfg.regions))
    if not 2 <= len(regions) <= _MAX_REGIONS:
        raise ConfigurationError(
            f"a global queue needs 2 to {_MAX_REGIONS} regions, got {len(regions)}"
        )
    names = [r.region for r in regions]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigurationError(f"region names must differ; repeated: {', '.join(dup)}")
    primaries = [r.region for r in regions if r.is_primary]
    if len(primaries) > 1:
        raise ConfigurationError(
            f"only one region may be is_primary=True, got {', '.join(primaries)}"
        )
    primary = primaries[0] if primaries else names[0]
    if not any(r.priority > 0 for r in regions if r.region != primary):
        raise ConfigurationError(
            "no region but the primary may ever be promoted (priority 0 everywhere else): "
            "give at least one other region a priority of 1 or more"
        )
    rep = coerce(ReplicationConfig, cfg.replication, "replication")
    if rep.mode not in ("async", "sync"):
        raise ConfigurationError(
            f"replication.mode must be 'async' or 'sync', got {shown(rep.mode)}"
        )
    majority = len(regions) // 2 + 1
    default_acks = max(1, len(regions) - majority)
    min_acks = default_acks if rep.min_acks is None else rep.min_acks
    to_int(min_acks, "replication.min_acks", minimum=1, maximum=len(regions) - 1)
    rep = replace(
        rep,
        ack_timeout_ms=to_ms(rep.ack_timeout_ms, "replication.ack_timeout_ms", minimum=1),
        batch=to_int(rep.batch, "replication.batch", minimum=1, maximum=500),
        linger_ms=to_int(rep.linger_ms, "replication.linger_ms", minimum=0, maximum=1000),
        index_retention_ms=to_ms(
            rep.index_retention_ms, "replication.index_retention_ms", minimum=1000
        ),
        schedule_sync_ms=to_ms(rep.schedule_sync_ms, "replication.schedule_sync_ms", minimum=50),
    )
    if rep.mode == "sync" and not rep.enabled:
        raise ConfigurationError("replication.mode='sync' needs replication.enabled=True")
    fo = coerce(FailoverConfig, cfg.failover, "failover")
    timeout = to_ms(fo.timeout_ms, "failover.timeout_ms", minimum=100)
    lease = to_ms(
        fo.lease_ms if fo.lease_ms is not None else timeout // 2,
        "failover.lease_ms",
        minimum=50,
    )
    if lease >= timeout:
        raise ConfigurationError(
            f"failover.lease_ms ({lease}) must be below failover.timeout_ms ({timeout}): the "
            "old primary must have stopped taking work before another region is promoted"
        )
    check = to_ms(
        fo.check_interval_ms
        if fo.check_interval_ms is not None
        else max(20, min(250, timeout // 10)),
        "failover.check_interval_ms",
        minimum=10,
    )
    if check * 3 > lease:
        raise ConfigurationError(
            f"failover.check_interval_ms ({check}) must be at most a third of the lease "
            f"({lease} ms): the lease is renewed from the health checks"
        )
    drain = to_ms(
        fo.drain_timeout_ms if fo.drain_timeout_ms is not None else timeout // 2,
        "failover.drain_timeout_ms",
    )
    if drain >= timeout:
        raise ConfigurationError(
            f"failover.drain_timeout_ms ({drain}) must be below failover.timeout_ms "
            f"({timeout}): a handover must end before other processes see a dead primary"
        )
    wait = to_ms(
        fo.handover_wait_ms if fo.handover_wait_ms is not None else timeout,
        "failover.handover_wait_ms",
    )
    fo = replace(
        fo,
        timeout_ms=timeout,
        lease_ms=lease,
        check_interval_ms=check,
        drain_timeout_ms=drain,
        handover_wait_ms=wait,
    )
    if cfg.workers not in ("primary", "own"):
        raise ConfigurationError(f"workers must be 'primary' or 'own', got {shown(cfg.workers)}")
    own = cfg.own_region
    if cfg.workers == "own":
        if own is None:
            raise ConfigurationError("workers='own' needs own_region= (this process's region)")
        if own not in names:
            raise ConfigurationError(f"own_region {shown(own)} is not one of {', '.join(names)}")
    if not isinstance(cfg.queue_options, Mapping):
        raise ConfigurationError("queue_options must be a dict of JobQueue arguments")
    owned = [k for k in _LANE_OWNED if k in cfg.queue_options]
    if owned:
        raise ConfigurationError(
            f"queue_options may not set {', '.join(owned)}: the name is the global queue's "
            "and each region has its own redis"
        )
    notify = tuple(cfg.notify)
    for n in notify:
        if not callable(getattr(n, "send_event", None)):
            raise ConfigurationError(
                f"notify takes objects with async send_event(event) (a WebhookManager), got "
                f"{type(n).__name__}"
            )
    if not isinstance(cfg.background, bool):
        raise ConfigurationError("background must be True or False")
    allowed = cfg.allowed_regions
    if cfg.tenants is not None:
        if allowed is not None:
            raise ConfigurationError(
                "give tenants= or allowed_regions=, not both (both say where a tenant's "
                "jobs may go)"
            )
        if not callable(getattr(cfg.tenants, "allowed_regions_for", None)):
            raise ConfigurationError(
                "tenants takes a TenantRegistry or an AccessControlManager (an object with "
                f"allowed_regions_for(tenant_id)), got {type(cfg.tenants).__name__}"
            )
        allowed = cfg.tenants
    return Checked(
        name=cfg.name,
        regions=regions,
        primary=primary,
        replication=rep,
        failover=fo,
        lease_ms=lease,
        check_interval_ms=check,
        min_acks=min_acks,
        majority=majority,
        workers=cfg.workers,
        own_region=own,
        allowed_regions=allowed,
        notify=notify,
        queue_options=dict(cfg.queue_options),
        background=cfg.background,
    )
