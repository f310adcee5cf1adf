"""``GlobalQueueManager``: one queue over several regions, with replication and failover.

Each region is an independent Redis deployment holding two queues built from the same
components as any ``JobQueue``: its copy of the **global queue** (``<name>``: live only
at the primary, copies elsewhere) and its **own queue** (``<name>/<region>``: the jobs
pinned to it). The manager is a ``MultiQueue`` façade over all of them, so the whole
queue API (queries, admin, events, processors, workers) is generated from
``api.QueueAPI``; this module adds the multi-region methods and the routing, the control
loop (``monitor.py``), replication (``replication.py``) and the stranded-work report
(``stranded.py``). Semantics and guarantees: docs/multi-region.md.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ...api import Operation, Route
from ...errors import (
    ConfigurationError,
    JobNotFoundError,
)
from ...facade import MultiQueue
from ...jobspec import job_item, job_items, options_dict
from ...limits import get_logger
from ...queue import HealthStatus, JobQueue
from .config import Checked, GlobalQueueConfig, check_config
from .confirm import Confirmer
from .election import View
from .errors import RegionUnavailableError
from .handover import Handover, Unreachable, through_fences
from .lanes import Lanes
from .monitor import Failover, Monitor
from .ops import RegionOps
from .record import RegionCopy
from .replication import Replicator
from .routing import GLOBAL, Router
from .stats import GlobalStats, collect_stats
from .stranded import StrandedJob
from .topology import Topology

if TYPE_CHECKING:
    from ...options import JobOptions

__all__ = ["GlobalQueueManager"]

log = get_logger(__name__)

# How long ``close`` gives each of its steps (the workers' step is bounded inside Lanes
# too: a worker stopping there has ``_STOP_WAIT_S``, ending its running jobs first).
_STEP_S = 15.0
_LANES_STEP_S = 45.0
_REGION_STEP_S = 20.0
#: How long ``close`` lets replication ship what the workers wrote as they stopped.
_SHIP_S = 5.0


async def _close_step(queue: str, what: str, step: Awaitable[None], timeout_s: float) -> None:
    """Run one step of a close for at most ``timeout_s``: an overrun is logged by name and
    cancelled, a failure (a region that is gone) logged, and the close goes on."""
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if not done:
        task.cancel()
        log.warning(
            "queue %s: closing %s took more than %.0f s; cancelled, closing the rest",
            queue,
            what,
            timeout_s,
        )
        return
    exc = task.exception()
    if exc is not None:  # e.g. closing the connection to a region that is gone
        log.debug("queue %s: closing %s failed", queue, what, exc_info=exc)


#: The private option ``add_job`` / ``add_jobs`` hand ``place`` the routed queue in.
_LANE = "__kq_lane"
#: Deadline of the first contact with a region (connect, load the scripts).
_FIRST_CONTACT_S = 10.0


def new_job_id() -> str:
    """A job id unique across regions and epochs (ms since the epoch, in hex, and 40
    random bits): a job keeps it through replication, failover and re-submission."""
    return f"{time.time_ns() // 1_000_000:011x}{secrets.token_hex(5)}"


#: The gauge a global queue provides on its queues (``queue.add_gauge``).
LAG_GAUGE = "region_lag_ms"


class GlobalQueueManager(RegionOps, MultiQueue[JobQueue]):
    """A queue spread over regions with failover.

    Example::

        regions = GlobalQueueManager()
        await regions.initialize({
            "name": "orders",
            "regions": [
                {"region": "us-east-1", "redis": "redis://us:6379", "is_primary": True},
                {"region": "eu-west-1", "redis": "redis://eu:6379", "priority": 1},
                {"region": "ap-southeast-1", "redis": "redis://ap:6379", "priority": 2},
            ],
            "replication": {"enabled": True},
            "failover": {"enabled": True, "timeout_ms": 5000},
        })

        @regions.process("charge")
        async def charge(job): ...

        job_id = await regions.add_job("charge", {"order": 42})          # the primary
        pinned = await regions.add_job("charge", {}, region="eu-west-1")  # eu's own queue
        await regions.start()                       # workers follow the primary
        print(await regions.get_global_stats())
        await regions.failover_to("eu-west-1")

    Ids: a job of the global queue keeps one id everywhere (``"18b3c...e7"``); a job
    pinned to a region has the full id ``"@<region>:<id>"``. A chosen ``job_id`` must not
    begin with ``@``. Every other method of the queue API is carried out on the primary's
    global queue and the regions' own queues (each method's docstring says how).

    Args:
        config: the configuration (``GlobalQueueConfig`` or dict); may instead be given
            to ``initialize``.
    """

    member_label = "region queue"
    member_key = "region"

    def __init__(self, config: GlobalQueueConfig | Mapping[str, Any] | None = None) -> None:
        self._members: list[JobQueue] = []
        super().__init__("", [])
        self._config = config
        self.cfg: Checked | None = None
        self.topo: Topology | None = None
        self.router: Router | None = None
        self.replicator: Replicator | None = None
        self.confirmer: Confirmer | None = None
        self.monitor: Monitor | None = None
        self.lanes: Lanes | None = None
        self.handover: Handover | None = None
        self.failovers: list[Failover] = []
        self._change_lock = asyncio.Lock()
        self._seen: tuple[str | None, int | None] = (None, None)

    @property
    def configuration(self) -> GlobalQueueConfig | Mapping[str, Any] | None:
        """The configuration given to the constructor (or to ``initialize``)."""
        return self._config

    # ------------------------------------------------------------------ members
    @property
    def queues(self) -> list[JobQueue]:
        if self.topo is None:
            raise ConfigurationError(
                "GlobalQueueManager is not initialized: await manager.initialize(config) first"
            )
        return self._members

    @queues.setter
    def queues(self, value: list[JobQueue]) -> None:
        self._members = list(value)

    def _topo(self) -> Topology:
        if self.topo is None:
            raise ConfigurationError(
                "GlobalQueueManager is not initialized: await manager.initialize(config) first"
            )
        return self.topo

    @property
    def regions(self) -> list[str]:
        """The region names, in configuration order."""
        return [c.name for c in self._topo().copies]

    @property
    def primary(self) -> str | None:
        """The current primary region (as this process last saw it)."""
        return self._topo().view.primary

    @property
    def epoch(self) -> int | None:
        """The current epoch (each promotion starts a new one)."""
        return self._topo().view.epoch

    def region(self, name: str) -> RegionCopy:
        """The region ``name``: its connection and its queues (``lane``: its copy of the
        global queue, ``home``: the jobs pinned to it)."""
        return self._topo().copy(name)

    # ------------------------------------------------------------------ setup
    async def initialize(self, config: GlobalQueueConfig | Mapping[str, Any] | None = None) -> None:
        """Connect to every region, agree on the primary (the first time: elect the
        ``is_primary`` region with a majority's votes) and, with ``background``, start the
        health checks, leases, automatic failover and replication in this process.

        Raises ``ConfigurationError`` for a bad configuration (or two regions sharing one
        Redis) and ``FailoverError`` when no majority of regions is reachable to elect
        the first primary.
        """
        monitor = self._build(config, Topology)
        try:
            await monitor.establish(_FIRST_CONTACT_S)
            if monitor.cfg.background:
                await monitor.replicator.follow_primary()
                await monitor.start()
        except BaseException:
            await self._shutdown()
            raise

    def _build(
        self, config: GlobalQueueConfig | Mapping[str, Any] | None, kind: type[Topology]
    ) -> Monitor:
        if self.topo is not None:
            raise ConfigurationError("GlobalQueueManager.initialize was called already")
        given = config if config is not None else self._config
        if given is None:
            raise ConfigurationError("initialize(config) needs the configuration")
        self._config = given
        cfg = self.cfg = check_config(given)
        timeout_s = min(2.0, max(0.2, cfg.failover.timeout_ms / 4000))
        opts, rep = cfg.queue_options, cfg.replication.enabled
        copies = [RegionCopy(r, cfg.name, opts, timeout_s, replicated=rep) for r in cfg.regions]
        topo = kind(cfg, copies)
        self.name = cfg.name
        self.queues = [c.lane for c in copies] + [c.home for c in copies]
        self.router = Router(cfg.names, cfg.allowed_regions)
        self.replicator = Replicator(topo, self._stranded_found)
        self.confirmer = Confirmer(topo)
        self.monitor = Monitor(topo, self.replicator, self._on_change)
        self.lanes = Lanes(topo)
        self.handover = Handover(topo, self.monitor)
        self.topo = topo
        for q in self.queues:  # alert rules on region_lag_ms read it (queue.read_gauge)
            q.add_gauge(LAG_GAUGE, self.region_lag_ms)
        return self.monitor

    # ------------------------------------------------------------------ façade hooks
    def _index(self, region: str, home: bool) -> int:
        names = self.regions
        return names.index(region) + (len(names) if home else 0)

    def _primary_index(self) -> int:
        primary = self._topo().view.primary
        if primary is None:
            raise RegionUnavailableError(
                f"queue {self.name!r} has no primary right now (no region holds the lease): "
                "a failover is under way or no majority of regions is reachable"
            )
        return self._index(primary, home=False)

    def place(self, options: dict[str, Any]) -> int:
        """The queue of a new job: the one ``add_job`` routed it to, else by its
        ``region`` (that region's own queue) or the primary's global queue. Gives the
        job an id unique across regions unless it has one."""
        lane = options.pop(_LANE, None)
        region = options.pop("region", None)
        job_id = options.get("job_id")
        if isinstance(job_id, str) and job_id.startswith("@"):
            raise ConfigurationError(
                f"job_id {job_id[:100]!r} begins with '@', which marks the full id of a job "
                f"pinned to a region ('@<region>:<id>'): choose an id that does not"
            )
        if not job_id:  # made here: no idempotency window to hold (jobspec)
            options["job_id"], options["job_id_window"] = new_job_id(), False
        if lane is None:
            if region is not None:
                self._topo().copy(str(region))
            lane = GLOBAL if region is None else str(region)
        return self._primary_index() if lane == GLOBAL else self._index(lane, home=True)

    def parse_id(self, job_id: str) -> tuple[int, str] | None:
        """``"@<region>:<id>"``: that region's own queue; any other id: the global
        queue at the primary."""
        if not isinstance(job_id, str) or not job_id:
            return None
        if job_id.startswith("@"):
            region, sep, inner = job_id[1:].partition(":")
            if not sep or not inner or region not in self.regions:
                return None
            return self._index(region, home=True), inner
        return self._primary_index(), job_id

    def full_id(self, index: int, inner: str) -> str:
        n = len(self.regions)
        return inner if index < n else f"@{self.regions[index - n]}:{inner}"

    def not_found(self, job_id: Any) -> JobNotFoundError:
        shown = repr(job_id[:100]) if isinstance(job_id, str) else type(job_id).__name__
        return JobNotFoundError(
            f"{shown} is not a job id of global queue {self.name!r}: use the id add_job "
            "returned (a pinned job's id is '@<region>:<id>' with a configured region)"
        )

    def designated(self, op: Operation) -> int | None:
        """Schedules belong to the global queue: they are kept (and fired) at the
        primary and copied to the secondaries, so a failover keeps them."""
        return self._primary_index() if op.kind == "schedule" else None

    def members_for(self, op: Operation) -> Sequence[int]:
        """Queries and per-job admin: the primary's global queue and the own queues of
        the reachable regions; broadcast commands (pause, resume, drain, clear,
        promote_delayed): every queue of every reachable region, copies included (a
        paused queue stays paused after a failover); health: every region."""
        topo = self._topo()
        n = len(topo.copies)
        up = [i for i, c in enumerate(topo.copies) if c.reachable is not False]
        if op.route is Route.FAN_OUT and op.merge == "health":
            return [self._primary_index(), *(n + i for i in range(n))]
        if op.route is Route.BROADCAST:
            return [*up, *(n + i for i in up)]
        return [self._primary_index(), *(n + i for i in up)]

    def describe_backend(self, parts: Sequence[HealthStatus]) -> str:
        topo = self._topo()
        return ", ".join(f"{c.name}: {c.describe()}" for c in topo.copies)

    def is_worker_running(self) -> bool:
        return self.lanes is not None and self.lanes.running()

    # ------------------------------------------------------------------ producing
    async def _route(self, opts: dict[str, Any]) -> str:
        topo = self._topo()  # ConfigurationError before initialize
        assert self.router is not None
        return await self.router.route_in(topo, opts)

    async def add_job(
        self,
        job_name: str,
        data: Any = None,
        options: JobOptions | Mapping[str, Any] | None = None,
        *,
        region: str | None = None,
        **kwargs: Any,
    ) -> str:
        """Add one job and return its id: to the primary (replicated; with
        ``replication.mode="sync"``, returns once ``min_acks`` other regions stored it),
        or to the own queue of ``region`` (or of the tenant's allowed region) when given.

        Raises ``RegionNotAllowedError`` (the tenant may not use the region),
        ``RegionUnavailableError`` (no primary reachable: a failover is under way),
        ``ReplicationTimeoutError`` (sync mode: too few acknowledgements), and what
        ``JobQueue.add_job`` raises.
        """
        opts = {**options_dict(options), **kwargs}
        if region is not None:
            opts.setdefault("region", region)
        lane = await self._route(opts)
        opts[_LANE] = lane
        if not opts.get("job_id"):
            opts["job_id"], opts["job_id_window"] = new_job_id(), False
        try:
            job_id, tried = await through_fences(
                self.monitor,
                self._topo(),
                lambda: super(GlobalQueueManager, self).add_job(job_name, data, dict(opts)),
                retry=lane == GLOBAL,
            )
        except Unreachable as exc:
            if lane != GLOBAL:
                raise exc.error from None
            raise self._unavailable(exc.tried, exc.error) from exc.error
        if lane == GLOBAL:
            await self._confirm([job_id], tried)
        return job_id

    async def add_jobs(self, jobs: Iterable[Any]) -> list[str]:
        """Add many jobs, each routed as ``add_job`` routes it; ids in input order. In
        sync mode returns once ``min_acks`` other regions stored those of the primary."""
        items: list[dict[str, Any]] = []
        for n, item in job_items(jobs):
            name, data, opts = job_item(n, item)
            opts[_LANE] = await self._route(opts)
            if not opts.get("job_id"):
                opts["job_id"], opts["job_id_window"] = new_job_id(), False
            items.append({"name": name, "data": data, "options": opts})
        global_ids = [str(i["options"]["job_id"]) for i in items if i["options"][_LANE] == GLOBAL]
        try:
            # A fenced call wrote nothing: adding the same jobs (ids given) again is safe.
            ids, tried = await through_fences(
                self.monitor,
                self._topo(),
                lambda: super(GlobalQueueManager, self).add_jobs(items),
                retry=bool(global_ids),
            )
        except Unreachable as exc:
            raise self._unavailable(exc.tried, exc.error) from exc.error
        if global_ids:
            wanted = set(global_ids)
            await self._confirm([i for i in ids if i in wanted], tried)
        return ids

    async def _confirm(self, ids: list[str], primary_name: str | None) -> None:
        """Sync mode: wait for the acknowledgements of ``ids``, stored by the primary
        ``primary_name`` (the one ``add_job`` wrote to, even if another took over
        since: the copies are read from where the jobs are)."""
        cfg, topo = self.cfg, self._topo()
        assert cfg is not None and self.confirmer is not None
        if not ids or not cfg.replication.enabled or cfg.replication.mode != "sync":
            return
        primary = topo.by_name.get(primary_name or "")
        if primary is None:
            raise RegionUnavailableError(f"queue {self.name!r}: no primary to confirm from")
        await self.confirmer.confirm(primary, ids)

    def _unavailable(self, tried: str | None, exc: BaseException) -> RegionUnavailableError:
        assert self.cfg is not None
        return RegionUnavailableError.primary_gone(self.name, tried, self._topo(), exc)

    # ------------------------------------------------------------------ multi-region API
    async def get_global_stats(self) -> GlobalStats:
        """Every region: health, role, epoch, lease, replication lag (entries and ms),
        counts of its copy of the global queue and of its own queue, stranded records."""
        assert self.replicator is not None
        topo = self._topo()
        return await collect_stats(topo, self.replicator, max(1.0, topo.copies[0].timeout_s))

    async def region_lag_ms(self) -> float | None:
        """The replication lag of the region furthest behind the primary: the age (ms)
        of the oldest change of the primary's outbox it has not applied (0: none
        pending). None when not initialized, replication is off, there is no reachable
        primary, or no secondary is reachable. The gauge ``region_lag_ms`` the manager
        provides on its queues (and ``AdvancedQueueConfig`` on the configured queue), read
        by alert rules on that metric."""
        topo = self.topo
        rep = self.replicator
        if topo is None or rep is None or not topo.cfg.replication.enabled:
            return None
        p = topo.primary_copy()
        if p is None or not p.reachable:
            return None
        timeout = max(1.0, topo.copies[0].timeout_s)
        worst: int | None = None
        for c in topo.copies:
            if c is p or not c.reachable:
                continue
            try:
                lag = await asyncio.wait_for(rep.lag(p, c), timeout)
            except Exception:
                lag = None
            if lag is not None:
                worst = lag.ms if worst is None else max(worst, lag.ms)
        return None if worst is None else float(worst)

    async def failover_to(self, region: str) -> Failover:
        """Make ``region`` the primary now.

        With the primary reachable this is a planned handover: the primary stops taking
        work, its running jobs get ``failover.drain_timeout_ms`` to finish, everything is
        replicated to ``region``, then ``region`` is elected (nothing lost, nothing run
        twice). With the primary unreachable, ``region`` is elected once the majority's
        grants to the old primary have lapsed (at most ``lease_ms``). Raises
        ``FailoverError`` when it cannot be done (no majority reachable, a priority-0
        region, the votes went elsewhere); the old primary then stays the primary.
        """
        assert self.handover is not None
        info = await self.handover.to(region)
        return info

    async def _stranded_found(self, found: list[StrandedJob]) -> None:
        assert self.lanes is not None
        self.lanes.emit(
            "region-stranded",
            found[0].region,
            {"count": str(len(found)), "region": found[0].region, "kept_in": found[0].recorded_in},
        )

    # ------------------------------------------------------------------ changes
    async def _on_change(self, prev: View, view: View, info: Failover | None) -> None:
        # Serialised, and once per view: a handover and a health check may both see the
        # same change; workers, the replicator and the reports must follow it once.
        assert self.lanes is not None and self.replicator is not None and self.cfg is not None
        async with self._change_lock:
            if info is not None:
                self.failovers.append(info)
            seen, self._seen = self._seen, (view.primary, view.epoch)
            await self.lanes.sync()
            if self.cfg.background:
                await self.replicator.follow_primary()
            if seen == self._seen or view.primary is None:
                return
            was = seen[0] if seen[0] is not None else prev.primary
            if was is not None and was != view.primary:
                await self.lanes.report_failover(was, view, info, self.cfg.notify)

    # ------------------------------------------------------------------ lifecycle
    async def start(self, *, concurrency: int | None = None) -> None:
        """Start workers in this process: on the primary's global queue (following it
        on failover) and on every region's own queue, or, with ``workers="own"``, on
        this region's own queue and on the global queue while this region is the
        primary. ``concurrency`` per queue served."""
        assert self.lanes is not None
        self._topo()
        self.stopped.clear()
        await self.lanes.start(concurrency)

    async def close(self) -> None:
        """Stop the control loop, replication and workers, and close every connection."""
        await self._shutdown()
        self.stopped.set()

    async def _shutdown(self) -> None:
        # Each step is bounded: a close that waits for ever on one part (a loop that
        # swallowed its cancellation, a region that stopped answering mid-call) would
        # leave every later part running. The step that overran is named in the log.
        name = self.cfg.name if self.cfg is not None else "?"
        if self.monitor is not None:
            await _close_step(name, "the region monitor", self.monitor.stop(), _STEP_S)
        if self.lanes is not None:
            await _close_step(name, "the workers", self.lanes.stop(), _LANES_STEP_S)
        if self.replicator is not None:
            ship = _ship_then_stop(name, self.replicator, self.topo)  # after the workers
            await _close_step(name, "replication", ship, _STEP_S)
        if self.topo is not None:
            await asyncio.gather(
                *(
                    _close_step(name, f"region {c.name}", c.close(), _REGION_STEP_S)
                    for c in self.topo.copies
                )
            )


async def _ship_then_stop(name: str, rep: Replicator, topo: Topology | None) -> None:
    """Stop replication once every reachable secondary applied the primary's outbox:
    what the workers wrote as they stopped (``close`` stops them first) is shipped, or a
    failover right after would run those jobs again. Waited for ``_SHIP_S`` at most, and
    only where this process replicates."""
    p = None if topo is None else topo.primary_copy()
    deadline = time.monotonic() + _SHIP_S
    while topo is not None and p is not None and p.reachable and rep.leading:
        secs = [c for c in topo.secondaries() if c.reachable]
        try:
            lags = await asyncio.wait_for(asyncio.gather(*(rep.lag(p, c) for c in secs)), _SHIP_S)
        except Exception:  # the primary stopped answering: nothing more ships
            break
        if all(lag is None or lag.entries == 0 for lag in lags):
            break
        if time.monotonic() >= deadline:
            behind = [c.name for c, lag in zip(secs, lags, strict=True) if lag and lag.entries]
            log.warning(
                "queue %s: closing with changes not yet replicated to %s", name, ", ".join(behind)
            )
            break
        await asyncio.sleep(0.05)
    await rep.stop()
