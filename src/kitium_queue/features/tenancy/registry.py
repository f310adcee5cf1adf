"""``TenantRegistry``: tenants, their quotas and weights, and their usage, across queues.

The registry keeps each tenant's config once per deployment (one key prefix:
``<prefix>:{!access}:tenants``, see ``keys.py``; its connection is a ``Deployment``, as
access control's and the audit log's) and copies its quota into every queue tenancy is
enabled on, where the queue's own scripts enforce it atomically (``docs/tenancy.md``):

* ``max_queue_size`` at enqueue (``accept`` slot): ``QuotaExceededError``, nothing written;
* ``max_concurrency`` and ``rate_limit`` at claim, across every worker (``admission``
  and ``release`` slots): a tenant over its cap waits in its lane, spending no attempt
  and blocking no one else;
* weighted fair dispatch between the tenants that share a queue (``weight``).

Every change gets a new version (one counter for all tenants) and is written with a
compare-and-set, to the registry first and then to each queue; a queue keeps only a
copy newer than its own, so copies that cross (two registries, a worker's periodic
resync) end with the newest everywhere. The registry write is the registry's
``writer`` (``TenantChange`` -> outcome): ``tn_registry.lua`` by default;
``AccessControlManager`` passes one that writes the change together with its audit
entry, in one script. Quotas are per queue and exact there; nothing
spans queues atomically (each queue has its own hash tag on a Redis Cluster): see
docs/tenancy.md for how to bound a tenant's work as a whole.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from redis.exceptions import RedisError

from ...connection import ConnectionFactory
from ...errors import ConfigurationError, KitiumQueueError, TenantNotFoundError
from ...keys import QueueKeys
from ...limits import get_logger
from ..audit.conn import Deployment, LuaScript
from . import keys as tk
from .install import (
    SYNC_INTERVAL_S,
    StoredTenant,
    attach,
    install,
    installed,
    propagate,
    redis_ms,
    run_script,
)
from .model import (
    QueueUsage,
    TenantConfig,
    TenantQuota,
    TenantUsage,
    check_tenant_id,
    check_tenant_name,
)
from .roster import (
    check_queues,
    declared,
    is_refusal,
    live_queues,
    members,
    queue_names,
    refusal,
    register,
)
from .usage import read_usages, suggestion

if TYPE_CHECKING:
    from ...queue import JobQueue

__all__ = ["TenantChange", "TenantRegistry", "TenantWriter"]

_REGISTRY = LuaScript(__package__, "tn_registry")
_VERSION = LuaScript(__package__, "tn_version")
_MAX_RETRIES = 20

log = get_logger(__name__)


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _is_queue(obj: Any) -> bool:
    return hasattr(obj, "keys") and hasattr(obj, "client") and hasattr(obj, "scripts")


@dataclass(frozen=True, slots=True)
class TenantChange:
    """One change of the registry, as its writer receives it.

    Attributes:
        op: ``"create"``, ``"update"`` or ``"remove"``.
        tenant_id: the tenant.
        body: the entry to store (JSON with its new version; a tombstone for a removal).
        version: the entry's new version.
        replaces: the version the change was computed from (None for a creation).
        config: the tenant's new config (None for a removal).
        key: the registry's hash (the field is ``tenant_id``).
    """

    op: str
    tenant_id: str
    body: bytes
    version: int
    replaces: int | None
    config: TenantConfig | None
    key: str


#: Writes a ``TenantChange`` to the registry (``client`` is the registry's) and says how
#: it went: ``"ok"``; ``"exists"`` (create: the tenant exists); ``"missing"`` (update or
#: remove: no such tenant); ``"conflict"`` (the entry changed since it was read: the
#: registry reads it again and retries). Nothing may be written unless ``"ok"``.
TenantWriter = Callable[[Any, TenantChange], Awaitable[str]]


async def lua_writer(client: Any, change: TenantChange) -> str:
    """The default ``TenantWriter``: ``tn_registry.lua``'s compare-and-set."""
    op = "create" if change.op == "create" else "put"
    replaces = "" if change.replaces is None else change.replaces
    args = [op, change.tenant_id, change.body, replaces]
    return _text(await run_script(client, _REGISTRY, [change.key], args))


class TenantRegistry:
    """Tenants with quotas and dispatch weights, for every queue of one deployment.

    Args:
        redis: where the registry lives: a ``JobQueue`` (or ``PartitionedQueue``): its
            connection and key prefix are used, and tenancy is enabled on it (as with
            ``enable``); or a connection as ``JobQueue`` takes it (a URL, a dict of
            options, a ``redis.asyncio`` client).
            A ``Deployment`` (``features/audit/conn.py``) shares that connection.
        prefix: the key prefix of the queues (default ``"kq"``; taken from the queue
            when one is given).
        quantum, fair_dispatch, enforce_quotas: passed to ``enable`` for the queue
            given as ``redis``.
        writer: how a change is written to the registry (``TenantWriter``; default
            ``tn_registry.lua``'s compare-and-set).

    Example::

        tenants = TenantRegistry(queue)       # or TenantRegistry(redis="redis://...")
        await tenants.create_tenant({"tenant_id": "acme", "name": "ACME Corp",
                                     "quota": {"max_queue_size": 100_000,
                                               "max_concurrency": 50, "rate_limit": 1000},
                                     "weight": 3})
        await queue.add_job("report", {...}, tenant_id="acme")

    Every process that adds or runs a queue's tenant jobs enables tenancy on it (with the
    same arguments, like ``process``). Changes are administrative commands: they reach
    every queue at once, and queues also re-copy the quotas every 30 s.
    """

    def __init__(
        self,
        redis: Any = None,
        *,
        prefix: str | None = None,
        quantum: int = 16,
        fair_dispatch: bool = True,
        enforce_quotas: bool = True,
        writer: TenantWriter | None = None,
    ) -> None:
        self._queue: Any = None
        self._shared = False  # a Deployment given: its owner closes it
        self._writer: TenantWriter = lua_writer if writer is None else writer
        if _is_queue(redis) or hasattr(redis, "queues"):
            self._use_queue(redis, prefix)
            self.enable(
                redis,
                quantum=quantum,
                fair_dispatch=fair_dispatch,
                enforce_quotas=enforce_quotas,
            )
        elif isinstance(redis, Deployment):
            if prefix is not None and prefix != redis.prefix:
                raise ConfigurationError(
                    f"prefix {prefix!r} differs from the deployment's key prefix {redis.prefix!r}"
                )
            self._dep = redis
            self._shared = True
        else:
            self._dep = Deployment(
                "memory://" if redis is None else redis, prefix, name="tenant registry"
            )

    def _use_queue(self, queue: Any, prefix: str | None) -> None:
        parts = list(getattr(queue, "queues", None) or [queue])
        own: str = parts[0].keys.prefix
        if prefix is not None and prefix != own:
            raise ConfigurationError(
                f"prefix {prefix!r} differs from the queue's key prefix {own!r}: the "
                "registry of a queue lives under the queue's prefix"
            )
        self._queue = queue
        # The queue's connection and prefix; its own client is used (no second one).
        self._dep = Deployment(parts[0], own, name="tenant registry")

    @property
    def prefix(self) -> str:
        """The key prefix of the deployment's queues."""
        return self._dep.prefix

    @property
    def _key(self) -> str:
        return tk.registry(self.prefix)

    @property
    def connection(self) -> ConnectionFactory:
        """How the registry connects to Redis."""
        return self._dep.connection

    @classmethod
    def for_queue(cls, queue: JobQueue) -> TenantRegistry:
        """The registry of ``queue``'s deployment (its connection and key prefix),
        without enabling tenancy on it: for tools that only manage or read (the CLI)."""
        reg = cls.__new__(cls)
        reg._writer = lua_writer
        reg._shared = False
        reg._use_queue(queue, None)
        return reg

    # ------------------------------------------------------------------ queues
    @staticmethod
    def enable(
        queue: Any,
        *,
        quantum: int = 16,
        fair_dispatch: bool = True,
        enforce_quotas: bool = True,
        sync_interval_s: float = SYNC_INTERVAL_S,
    ) -> None:
        """Enable tenancy on ``queue`` (each partition of a ``PartitionedQueue``): jobs
        may carry ``tenant_id``, and the tenants' quotas and weights apply to them.

        Args:
            queue: the ``JobQueue``; it uses the registry under its own key prefix.
            quantum: dispatch tickets per unit of weight: how many jobs of a tenant of
                weight 1 sit in wait at once (the rest wait in its lane). Larger means
                fewer refills (cheaper) and a coarser interleaving of tenants.
            fair_dispatch: False keeps the quotas but lets tenants' jobs run in plain
                queue order (no lanes, no tickets: cheaper; a tenant with a backlog
                then delays the others).
            enforce_quotas: False tracks tenants (their jobs counted, usage reported,
                unknown tenants and regions refused) and keeps fair dispatch, but
                enforces no quota: ``max_queue_size``, ``max_concurrency`` and
                ``rate_limit`` are stored and shown, not applied, in this queue.
            sync_interval_s: how often each worker re-copies the quotas into the queue.

        Call it in every process that adds or runs the queue's jobs, with the same
        arguments (they are compiled into the queue's scripts).
        """
        for q in list(getattr(queue, "queues", None) or [queue]):
            install(
                q,
                quantum=quantum,
                fair_dispatch=fair_dispatch,
                enforce_quotas=enforce_quotas,
                sync_interval_s=sync_interval_s,
            )

    async def attach(self, queue: Any) -> int:
        """Register ``queue`` (each partition) with the registry now and copy every
        tenant's quota into it; returns the copies written. Enabled queues do this on
        their own (first tenant job added in a process, worker start); this is for
        tools and tests that want it done before."""
        total = 0
        for q in list(getattr(queue, "queues", None) or [queue]):
            if q.keys.prefix != self.prefix:
                raise ConfigurationError(
                    f"queue {q.name!r} uses key prefix {q.keys.prefix!r}, this registry "
                    f"{self.prefix!r}"
                )
            total += await attach(q)
        return total

    async def queues(self) -> list[str]:
        """Names of the queues tenancy is enabled on (that registered) and that are
        still there, sorted; none when their set holds another type (damaged: logged).
        A queue none of whose keys is left (deleted) leaves the set here, checked again
        so that a queue registering at the same time stays; one with jobs, or only
        cleared, stays (docs/tenancy.md)."""
        async with self._errors() as client:
            names = await members(client, tk.registry_queues(self.prefix))
            return sorted(await live_queues(client, self.prefix, names))

    async def sync(self, queues: Iterable[str] | None = None) -> int:
        """Copy every tenant's quota into every registered queue (each copy only if
        newer); returns the copies written. Removed tenants with nothing left in any
        queue leave the registry (their queues' copies expire: docs/tenancy.md), and so
        do queues whose keys are gone (``queues``). Registered again first, as their own
        processes register them: the queue this registry was made from (each partition)
        when tenancy is enabled on it in this process, its declarations written again
        (``quantum``, ``fair_dispatch``, ``enforce_quotas``), even if its keys were
        deleted; and the queues named in ``queues``, each of which must be there (some
        key of its own, or a live worker): a name that is not is refused with
        ``ConfigurationError``, naming it, and nothing is written."""
        own: dict[str, dict[str, int]] = {}
        for q in list(getattr(self._queue, "queues", None) or [self._queue]):
            how = None if q is None else installed(q)
            if how is not None:
                own[q.name] = declared(how["quantum"], how["fair_dispatch"], how["enforce_quotas"])
        names = {QueueKeys(n, self.prefix).name for n in queue_names(queues) or ()}
        async with self._errors(write=True) as client:
            await check_queues(client, self.prefix, sorted(names - own.keys()))
            for name in sorted(names | own.keys()):
                await register(client, self.prefix, name, own.get(name))
            read_at = await redis_ms(client)
            entries = await _entries(client, self.prefix)
            for e in entries:
                e.read_at = read_at
            return await propagate(client, self.prefix, entries)

    # ------------------------------------------------------------------ tenants
    async def create_tenant(self, config: TenantConfig | Mapping[str, Any]) -> TenantConfig:
        """Create a tenant (``TenantConfig`` or a dict with ``tenant_id``, ``name``,
        ``quota`` {``max_queue_size``, ``max_concurrency``, ``rate_limit``},
        ``allowed_regions``, ``weight``); returns it as stored. Its quota reaches every
        registered queue before this returns. ``ConfigurationError`` if it exists, or if
        its id mixes scripts (``check_tenant_id``: a look-alike of another id) or its name
        holds a format character (``check_tenant_name``)."""
        cfg = TenantConfig.of(config)
        check_tenant_id(cfg.tenant_id)
        check_tenant_name(cfg.name)
        async with self._errors(write=True) as client:
            for _ in range(_MAX_RETRIES):
                version, now = await _next_version(client, self.prefix)
                entry = StoredTenant(cfg.tenant_id, cfg, version, read_at=now)
                change = TenantChange(
                    "create", cfg.tenant_id, _json(cfg, version), version, None, cfg, self._key
                )
                out = await self._writer(client, change)
                if out == "exists":
                    _check(await _entry(client, self.prefix, cfg.tenant_id), self._key)
                    raise ConfigurationError(
                        f"tenant {cfg.tenant_id!r} exists already; change it with "
                        "update_tenant() or remove it first"
                    )
                if out == "ok":
                    await propagate(client, self.prefix, [entry])
                    return cfg
        raise KitiumQueueError(
            f"tenant {cfg.tenant_id!r} was changed {_MAX_RETRIES} times by others while it "
            "was created; try again"
        )

    async def update_tenant(
        self,
        tenant_id: str,
        changes: TenantConfig | Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> TenantConfig:
        """Change a tenant: ``name``, ``quota``, ``allowed_regions``, ``weight``, given
        as a dict or keyword arguments. A ``quota`` dict changes only the limits it names
        (``None`` removes one); a ``TenantQuota`` replaces the quota; a whole
        ``TenantConfig`` (of the same tenant) replaces the config. Returns the new
        config; ``TenantNotFoundError`` if there is no such tenant. An update that
        changes nothing writes nothing (no version, no audit entry, no copy)."""
        tid = check_tenant_id(tenant_id, existing=True)
        if isinstance(changes, TenantConfig):
            if changes.tenant_id != tid:
                raise ConfigurationError(
                    f"update_tenant({tid!r}) got the config of tenant {changes.tenant_id!r}"
                )
            changes = {k: v for k, v in changes.to_dict().items() if k != "tenant_id"}
            changes["quota"] = TenantConfig.of({"tenant_id": tid, **changes}).quota
        elif changes is not None and not isinstance(changes, Mapping):
            raise ConfigurationError(
                f"update_tenant changes must be a dict or a TenantConfig, got "
                f"{type(changes).__name__}"
            )
        wanted = {**(changes or {}), **fields}
        async with self._errors(write=True) as client:
            for _ in range(_MAX_RETRIES):
                cur = await _entry(client, self.prefix, tid)
                _check(cur, self._key)
                if cur is None or cur.config is None:
                    raise self._not_found(tid)
                new = cur.config.changed(wanted)
                if new == cur.config:
                    return new
                if new.name != cur.config.name:
                    check_tenant_name(new.name)
                entry = await self._put(client, cur, new)
                if entry is not None:
                    await propagate(client, self.prefix, [entry])
                    return new
        raise KitiumQueueError(
            f"tenant {tid!r} was changed {_MAX_RETRIES} times by others while this "
            "update was computed; try again"
        )

    async def remove_tenant(self, tenant_id: str) -> bool:
        """Remove a tenant: queues refuse its new jobs; the ones it has go on and run
        without its quota (weight 1). Its keys go once nothing of it is left, after
        ``TOMBSTONE_TTL_S`` (docs/tenancy.md). False if there was no such tenant."""
        tid = check_tenant_id(tenant_id, existing=True)
        async with self._errors(write=True) as client:
            for _ in range(_MAX_RETRIES):
                cur = await _entry(client, self.prefix, tid)
                if cur is None or cur.config is None:
                    return False
                entry = await self._put(client, cur, None)
                if entry is not None:
                    await propagate(client, self.prefix, [entry])
                    return True
        raise KitiumQueueError(f"tenant {tid!r} kept changing while it was removed; try again")

    async def get_tenant(self, tenant_id: str) -> TenantConfig | None:
        """The tenant's config, or None."""
        tid = check_tenant_id(tenant_id, existing=True)
        async with self._errors() as client:
            cur = await _entry(client, self.prefix, tid)
        return None if cur is None else cur.config

    async def allowed_regions_for(self, tenant_id: str) -> tuple[str, ...] | None:
        """The regions where the tenant's jobs may be stored and run, ``None`` for any
        (an empty ``allowed_regions``). This makes the registry a region lookup for
        multi-region routing (``GlobalQueueManager``'s ``tenants`` setting). Raises
        ``TenantNotFoundError`` for an unknown tenant (its jobs are then refused)."""
        tid = check_tenant_id(tenant_id, existing=True)
        tenant = await self.get_tenant(tid)
        if tenant is None:
            raise self._not_found(tid)
        return tenant.allowed_regions or None

    async def list_tenants(self) -> list[TenantConfig]:
        """Every tenant, by id."""
        async with self._errors() as client:
            entries = await _entries(client, self.prefix)
        return sorted(
            (e.config for e in entries if e.config is not None), key=lambda c: c.tenant_id
        )

    async def get_tenant_quota(self, tenant_id: str) -> TenantQuota:
        """The tenant's quota; ``TenantNotFoundError`` if there is no such tenant."""
        cfg = await self.get_tenant(tenant_id)
        if cfg is None:
            raise self._not_found(tenant_id)
        return cfg.quota

    async def get_tenant_usage(
        self, tenant_id: str, queues: Iterable[str] | None = None
    ) -> TenantUsage:
        """What the tenant uses now, per queue (each read atomically) and in total:
        queued, active, held in its lane, rate used, completed and failed. ``queues``:
        the queue names to read (default: every registered queue that is still there,
        ``queues()``: a deleted queue is neither read nor listed). A removed tenant
        with jobs (or totals) left still reports them; an unknown one with nothing
        left is ``TenantNotFoundError``. Only reads (``EVALSHA_RO`` on Redis 7.0+): a
        Redis user that may only read the keys may call it."""
        tid, given = check_tenant_id(tenant_id, existing=True), queue_names(queues)
        async with self._errors() as client:
            names = given if given is not None else await self.queues()
            per = [(await read_usages(client, self.prefix, name, [tid]))[0] for name in names]
            usage = TenantUsage.total(tid, per)
            if usage.empty and await client.hget(self._key, tid) is None:
                raise self._not_found(tid, await suggestion(client, self._key, tid))
        return usage

    async def get_usages(self, tenant_ids: Iterable[str], queue: str) -> dict[str, QueueUsage]:
        """Each tenant's usage in queue ``queue``, read as ``get_tenant_usage(tid,
        [queue])`` reads it (each tenant's atomically), in one pipeline: one round trip."""
        tids = [check_tenant_id(t, existing=True) for t in tenant_ids]
        async with self._errors() as client:
            got = await read_usages(client, self.prefix, queue, tids)
        return dict(zip(tids, got, strict=True))

    # ------------------------------------------------------------------ internals
    def _not_found(self, tenant_id: str, hint: str = "") -> TenantNotFoundError:
        return TenantNotFoundError(
            f"no tenant {tenant_id!r}{hint} under key prefix {self.prefix!r}; create it with "
            "create_tenant() (list them with list_tenants())"
        )

    async def _put(
        self, client: Any, cur: StoredTenant, new: TenantConfig | None
    ) -> StoredTenant | None:
        """Replace ``cur`` by ``new`` (None: a tombstone) if nobody changed it since it
        was read; the new entry, or None on a conflict."""
        version, now = await _next_version(client, self.prefix)
        body = (
            _json(new, version)
            if new is not None
            else orjson.dumps(
                {
                    "tenant_id": cur.tenant_id,
                    "removed": True,
                    "version": version,
                    "updated_at": _now_ms(),
                }
            )
        )
        op = "update" if new is not None else "remove"
        change = TenantChange(op, cur.tenant_id, body, version, cur.version, new, self._key)
        out = await self._writer(client, change)
        if out == "missing":
            raise self._not_found(cur.tenant_id)
        return StoredTenant(cur.tenant_id, new, version, read_at=now) if out == "ok" else None

    @contextlib.asynccontextmanager
    async def _errors(self, *, write: bool = False) -> AsyncIterator[Any]:
        """The client, and Redis errors translated (``Deployment.error``); a refusal for
        lack of permission names the keys refused and what to grant (``refusal``;
        ``write``: the call changes tenants)."""
        try:
            yield await self._get_client()
        except KitiumQueueError:
            raise
        except (RedisError, OSError) as exc:
            if is_refusal(exc):
                detail = self._dep.connection.redact(str(exc))
                raise refusal(exc, self.prefix, detail, write=write) from None
            raise self._dep.error(exc) from None

    async def _get_client(self) -> Any:
        if self._queue is not None:
            parts = list(getattr(self._queue, "queues", None) or [self._queue])
            return await parts[0].client()
        return await self._dep.client()

    async def close(self) -> None:
        """Release the registry's own connection (a queue's, or a ``Deployment``
        given to it, is left to its owner)."""
        if self._queue is None and not self._shared:
            await self._dep.close()

    async def __aenter__(self) -> TenantRegistry:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _entry(client: Any, prefix: str, tenant_id: str) -> StoredTenant | None:
    return StoredTenant.parse(tenant_id, await client.hget(tk.registry(prefix), tenant_id))


async def _entries(client: Any, prefix: str) -> list[StoredTenant]:
    out = []
    for tid, raw in (await client.hgetall(tk.registry(prefix))).items():
        name = _text(tid)
        try:
            check_tenant_id(name, existing=True)
        except ConfigurationError:
            continue
        entry = StoredTenant.parse(name, raw)
        if entry is not None:
            out.append(entry)
    return out


async def _next_version(client: Any, prefix: str) -> tuple[int, int]:
    """The next version of the registry: the Redis clock in ms, or the last + 1
    (``tn_version.lua``: above every version handed out, even after Redis lost its
    latest writes); and the Redis clock (ms) it was taken at."""
    key = tk.registry_version(prefix)
    got = await run_script(client, _VERSION, [key], [])
    if isinstance(got, list) and len(got) == 2 and all(isinstance(g, int) for g in got):
        return int(got[0]), int(got[1])
    raise KitiumQueueError(
        f"the tenant registry's version counter {key} is damaged (not an integer, or "
        f"another Redis type): no tenant change can be made. SET it to an integer above "
        f"every 'version' stored in {tk.registry(prefix)} (queues ignore copies with a "
        "version they already passed), then make the change again"
    )


def _check(entry: StoredTenant | None, key: str) -> None:
    """``ConfigurationError`` saying how to repair ``entry`` when it is damaged."""
    if entry is not None and entry.damaged:
        raise ConfigurationError(
            f"the registry entry of tenant {entry.tenant_id!r} is damaged ({entry.damaged}): "
            f"it cannot be changed. Delete it (HDEL {key} {entry.tenant_id}) and create the "
            "tenant again"
        )


def _now_ms() -> int:
    return int(time.time() * 1000)


def _json(cfg: TenantConfig, version: int) -> bytes:
    return orjson.dumps({**cfg.to_dict(), "version": version, "updated_at": _now_ms()})
