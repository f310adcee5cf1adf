"""Multi-tenancy on one queue: what ``TenantRegistry.enable(queue)`` installs.

* the job option ``tenant_id`` (the option registry);
* the Lua fragments (``lua.py``) in the ``accept``, ``enqueue``, ``admission`` and
  ``release`` slots (with fair dispatch also a first ``admission`` check that watches
  ticket holders, and a ``duplicate`` fragment), compiled from the queue's declarations
  (``quantum``, ``fair_dispatch``, ``enforce_quotas``): the same in every process that
  adds or runs the queue's jobs;
* enqueue middleware that, the first time this process adds a job with a tenant, makes
  sure the queue is known to the registry and holds every tenant's quota (``attach``),
  and does it again when it finds the queue's registration gone (checked at most once
  every ``SYNC_INTERVAL_S``: the queue's keys were deleted);
* a service run by each worker that does the same at start and then every
  ``SYNC_INTERVAL_S`` (quota changes reach queues at once; this heals a copy a crash
  interrupted, and recounts a tenant's damaged count of unfinished jobs);
* a ``clear()`` step that resets the tenants' counts (their quotas stay).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson
from redis.exceptions import NoPermissionError, ResponseError

from ...connection import TRANSIENT_ERRORS
from ...errors import ConfigurationError
from ...keys import QueueKeys
from ...leader import cancel_and_wait
from ...limits import get_logger, printable
from ...options import to_int
from ..audit.conn import LuaScript
from . import keys as tk
from . import lua
from .heal import SCRIPT as HEAL_SCRIPT
from .heal import heal_tenants
from .lua import run_script, run_scripts
from .model import TenantConfig, check_tenant_id
from .roster import QueueRefused, declared, is_refusal, live_queues, members, prune

if TYPE_CHECKING:
    from ...queue import JobQueue

__all__ = [
    "SYNC_INTERVAL_S",
    "TOMBSTONE_TTL_S",
    "StoredTenant",
    "attach",
    "install",
    "installed",
    "propagate",
    "put_tenant",
    "recount",
    "redis_ms",
    "run_script",
    "run_scripts",
]

log = get_logger(__name__)

#: How often each worker re-copies the tenants' quotas into its queue (seconds).
SYNC_INTERVAL_S = 30.0
#: How long a removed tenant's copy in a queue (its tombstone) outlives the last of its
#: jobs there, refusing copies read before the removal; and so the oldest copy a queue
#: takes (``tn_put.lua``: one read longer ago is not written). Seconds.
TOMBSTONE_TTL_S = 3600.0
_MIN_SYNC_S, _MAX_SYNC_S = 0.1, 86_400.0
_MAX_QUANTUM = 1000
#: Versions are counted by INCR: a stored one beyond 2**53 (or not an int) is damage,
#: and would make every later copy of the tenant look older than it.
_MAX_VERSION = 2**53

# One installation per queue object: (quantum, fair_dispatch, enforce_quotas).
_INSTALLED: weakref.WeakKeyDictionary[Any, tuple[int, bool, bool]] = weakref.WeakKeyDictionary()
# Queues whose Redis user may not read the registry (warned once).
_NO_ACCESS: weakref.WeakSet[Any] = weakref.WeakSet()
# Queues whose Redis user may not drop tombstones from the registry (not tried again).
_NO_FORGET: weakref.WeakSet[Any] = weakref.WeakSet()


TN_RECOUNT = LuaScript(__package__, "tn_recount")
TN_REGISTRY = LuaScript(__package__, "tn_registry")
#: A recount step (``recount``): SCANs of this many keys, this many per script call.
RECOUNT_PER_SCAN, RECOUNT_SCANS = 1000, 2


class StoredTenant:
    """A registry entry read back from Redis: a live config or a tombstone, with its
    version. ``config`` is None for a tombstone or an entry that cannot be read
    (``damaged`` then says why). ``read_at``: when it was read from the registry (ms,
    Redis clock; None unknown): a queue does not take a copy read longer than
    ``TOMBSTONE_TTL_S`` ago."""

    __slots__ = ("config", "damaged", "read_at", "tenant_id", "version")

    def __init__(
        self,
        tenant_id: str,
        config: TenantConfig | None,
        version: int,
        damaged: str = "",
        read_at: int | None = None,
    ) -> None:
        self.tenant_id = tenant_id
        self.config = config
        self.version = version
        self.damaged = damaged
        self.read_at = read_at

    @property
    def tombstone(self) -> bool:
        """A removed tenant's entry (not a damaged one)."""
        return self.config is None and not self.damaged

    @classmethod
    def parse(cls, tenant_id: str, raw: bytes | str | None) -> StoredTenant | None:
        """The entry of ``tenant_id`` from its stored JSON (None when there is none).
        Read back from Redis, so checked like input: a damaged entry (not JSON, a
        version that is no int from 0 to 2**53, a config that does not check, or the
        config of another tenant than its field names) is logged and reads as a
        tombstone of version 0."""
        if raw is None:
            return None
        try:
            data = orjson.loads(raw)
            if not isinstance(data, Mapping):
                raise ValueError("not an object")
            version = data.get("version", 0)
            if type(version) is not int or not 0 <= version <= _MAX_VERSION:
                raise ValueError(f"version {str(version)[:40]} is not an int from 0 to 2**53")
            if data.get("tenant_id", tenant_id) != tenant_id:
                raise ValueError("it holds the config of another tenant")
            if data.get("removed") is True:
                return cls(tenant_id, None, version)
            return cls(tenant_id, TenantConfig.from_stored(data), version)
        except (ValueError, TypeError, ConfigurationError) as exc:
            why = printable(exc)[:300]
            log.warning(
                "tenant registry: the entry of tenant %s cannot be read (%s); it "
                "is ignored until it is written again",
                printable(tenant_id)[:200],
                why,
            )
            return cls(tenant_id, None, 0, why or type(exc).__name__)

    def copy_args(self) -> list[Any]:
        """ARGV of ``tn_put.lua`` (after the tenant id) for this entry."""
        c = self.config
        if c is None:
            return [self.version, "0", 0, 0, 0, 0, 1, ""]
        q, rl = c.quota, c.quota.rate_limit
        regions = "," + ",".join(c.allowed_regions) + "," if c.allowed_regions else ""
        return [
            self.version,
            "1",
            q.max_queue_size or 0,
            q.max_concurrency or 0,
            rl.max if rl else 0,
            rl.duration if rl else 0,
            repr(c.weight),
            regions,
        ]


async def recount(
    client: Any,
    queue_keys: Any,
    tenant_id: str,
    *,
    per_scan: int = RECOUNT_PER_SCAN,
    scans: int = RECOUNT_SCANS,
) -> int | None:
    """Recount tenant ``tenant_id``'s damaged count of unfinished jobs in one queue from
    its jobs, in bounded steps (``tn_recount.lua``: ``scans`` SCANs of ``per_scan``
    keys each, a few ms of Redis per step at the defaults); the jobs added and ended
    meanwhile are kept exact by the tenancy fragments. Returns the count (also when it
    was a count already, or another process finished the pass), or None when the
    tenant's key holds another Redis type. Steps of several processes share one pass."""
    key = tk.tenant(queue_keys, tenant_id)
    pass_id = secrets.token_hex(8)
    while True:
        reply = await run_script(client, TN_RECOUNT, [key], [tenant_id, per_scan, scans, pass_id])
        status = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        if status == "ok":
            return int(reply[1])
        if status != "more":
            return None


async def redis_ms(client: Any) -> int:
    """The Redis clock, in ms."""
    secs, micros = await client.time()
    return int(secs) * 1000 + int(micros) // 1000


async def put_tenant(client: Any, queue_keys: Any, entry: StoredTenant) -> bool:
    """Copy ``entry`` into one queue (if newer than the copy there); whether it was
    written (``copy_tenant``)."""
    got = await copy_tenant(client, queue_keys, entry)
    return got is not None and got[0]


async def copy_tenant(
    client: Any, queue_keys: Any, entry: StoredTenant, *, only_existing: bool = False
) -> tuple[bool, bool] | None:
    """Copy ``entry`` into one queue (if newer than the copy there): whether it was
    written, and whether the queue's copy is a retired tombstone of this version or a
    newer one (the tenant removed and nothing of it left there: the copy expires after
    ``TOMBSTONE_TTL_S``, ``tn_put.lua``). A copy whose keys hold another type (damaged),
    or read longer than ``TOMBSTONE_TTL_S`` ago, is not written, and logged: the other
    queues and tenants still get theirs. A tenant count that is not an integer
    (damaged) is recounted from the tenant's jobs (``recount``), and logged.
    ``only_existing``: write nothing into a queue none of whose keys is left
    (``tk.presence``), checked in the same script, and return None for it."""
    tid = entry.tenant_id
    keys = [
        *queue_keys.all,
        tk.tenant(queue_keys, tid),
        tk.index(queue_keys),
        *tk.usage(queue_keys, tid)[1:],
        tk.declarations(queue_keys),
        *tk.presence(queue_keys),
    ]
    read_at = "" if entry.read_at is None else entry.read_at
    args = [queue_keys.base, "", "", tid, *entry.copy_args()]
    ttl_ms, only = int(TOMBSTONE_TTL_S * 1000), "1" if only_existing else ""
    reply = await run_script(client, lua.put_script(), keys, [*args, read_at, ttl_ms, only])
    if int(reply[0]) == -3:
        return None
    if len(reply) > 2:
        # Its count of unfinished jobs is damaged (not an integer): recounted.
        held = reply[2].decode("utf-8", "replace") if isinstance(reply[2], bytes) else reply[2]
        counted = await recount(client, queue_keys, entry.tenant_id)
        if counted is not None:
            log.warning(
                "queue %s: tenant %s's count of unfinished jobs (field n of %s) held %s, "
                "not a count (damaged outside kitium-queue); recounted from its jobs: %d. "
                "Its new jobs are accepted again",
                queue_keys.name,
                entry.tenant_id,
                keys[12],
                printable(str(held))[:60],
                counted,
            )
    out = int(reply[0])
    if out == -2:
        log.warning(
            "queue %s: the copy of tenant %s was not written: it was read from the "
            "registry more than %.0f s ago (a copy that late could bring back a removed "
            "tenant); the next sync copies it again",
            queue_keys.name,
            tid,
            TOMBSTONE_TTL_S,
        )
    elif out < 0:
        log.warning(
            "queue %s: the copy of tenant %s was not written: %s or %s holds another "
            "Redis type (damaged or written by hand); delete it and run "
            "TenantRegistry.sync()",
            queue_keys.name,
            entry.tenant_id,
            keys[12],
            keys[13],
        )
    return out > 0, int(reply[1]) == 1


async def propagate(client: Any, prefix: str, entries: list[StoredTenant]) -> int:
    """Copy ``entries`` into every registered queue that is still there (each copy only
    if newer; ``live_queues``: gone queues leave the set, and a queue found gone by its
    copy too, nothing of it written); returns the copies written. A tombstone retired
    in every queue (the removed tenant has nothing left in any: ``copy_tenant``) leaves
    the registry (``tn_registry.lua`` 'drop', only if it is still that tombstone): the
    queues' copies refuse late copies until they expire, and nothing else needs it any
    more."""
    written = 0
    retired = {e.tenant_id: e.tombstone for e in entries}
    names = await members(client, tk.registry_queues(prefix))
    gone: list[str] = []
    for name in await live_queues(client, prefix, names):
        qk = QueueKeys(name, prefix)
        for entry in entries:
            try:
                got = await copy_tenant(client, qk, entry, only_existing=True)
            except ResponseError as exc:
                if is_refusal(exc):  # named in the error: the queue's keys, not the registry's
                    raise QueueRefused(name, exc) from exc
                raise
            if got is None:  # deleted since it was checked: nothing of it is left
                gone.append(name)
                break
            written += got[0]
            retired[entry.tenant_id] = retired[entry.tenant_id] and got[1]
    if gone:
        await prune(client, prefix, gone)
    for entry in entries:
        if retired[entry.tenant_id]:
            args = ["drop", entry.tenant_id, "", entry.version]
            await run_script(client, TN_REGISTRY, [tk.registry(prefix)], args)
    return written


async def attach(queue: JobQueue) -> int:
    """Make ``queue`` known to the tenant registry of its key prefix and copy every
    tenant's quota into it (each copy only if newer). Returns the copies written
    (``_attach``)."""
    return (await _attach(queue))[0]


async def _attach(queue: JobQueue) -> tuple[int, list[str], dict[str, StoredTenant]]:
    """``attach``, the ids of the tenants it found (live or removed), and the
    tombstones the queue's copies retired (the removed tenant has nothing left there).

    A Redis user limited to the queue's own keys (ACL ``~<prefix>:{<queue>}:*``) may not
    touch the registry's keys: then nothing is done here (logged once), and the queue
    relies on an administrator's ``TenantRegistry.attach(queue)`` and on the registry's
    writes (docs/tenancy.md).
    """
    client = await queue.client()
    prefix = queue.keys.prefix
    # First the queue's own mark of its registration, then the registry's set: a reader
    # that found the queue gone and takes it out sees the mark, or this add comes after
    # (``roster.prune``).
    with contextlib.suppress(NoPermissionError):  # a user that may not: as before
        await client.set(tk.registered(queue.keys), "1")
    have = _INSTALLED.get(queue)
    if have is not None:
        # The queue's declarations, by which a quota copy refills lanes (tn_put.lua).
        decl = declared(*have)
        with contextlib.suppress(ResponseError):  # damaged: no refill at copy time
            await client.hset(tk.declarations(queue.keys), mapping=decl)
    try:
        try:
            await client.sadd(tk.registry_queues(prefix), queue.name)
        except ResponseError as exc:
            if "WRONGTYPE" not in str(exc):
                raise
            _damaged(tk.registry_queues(prefix), "the queue is not registered")
        read_at = await redis_ms(client)
        try:
            entries = await client.hgetall(tk.registry(prefix))
        except ResponseError as exc:
            if "WRONGTYPE" not in str(exc):
                raise
            _damaged(tk.registry(prefix), "no tenant is copied into the queue")
            return 0, [], {}
    except NoPermissionError:
        if queue not in _NO_ACCESS:
            _NO_ACCESS.add(queue)
            log.warning(
                "queue %s: the Redis user may not read the tenant registry (%s); tenants' "
                "quotas reach this queue only when written by TenantRegistry (attach the "
                "queue with an administrator's connection, see docs/tenancy.md)",
                queue.name,
                tk.registry(prefix),
            )
        return 0, [], {}
    written: int = 0
    names: list[str] = []
    retired: dict[str, StoredTenant] = {}
    for tid, raw in entries.items():
        name = tid.decode("utf-8", "replace") if isinstance(tid, bytes) else str(tid)
        try:
            check_tenant_id(name, existing=True)
        except ConfigurationError:
            continue  # not written by the registry; never used as a key part
        entry = StoredTenant.parse(name, raw)
        if entry is None:
            continue
        entry.read_at = read_at
        got = await copy_tenant(client, queue.keys, entry)
        done, gone = got if got is not None else (False, True)
        written += done
        if entry.config is not None or entry.tombstone:
            names.append(name)
        if entry.tombstone and gone:
            retired[name] = entry
    return written, names, retired


def _damaged(key: str, what: str) -> None:
    log.warning(
        "tenant registry: key %s holds another Redis type than kitium-queue writes there "
        "(damaged or written by hand); %s. Inspect and delete it (queues register again "
        "at their next sync; tenants must be created again)",
        key,
        what,
    )


class _AttachOnFirstUse:
    """Enqueue middleware: before the first job with a tenant this process adds to the
    queue, ``attach`` it (so its quotas are there). Then, before a job with a tenant at
    most once every ``interval_s``, one ``EXISTS`` of the queue's registration mark
    (``tk.registered``, kept by ``clear()``): gone, the queue's keys were deleted, its
    quota copies with them, and it is attached again. Free in between."""

    def __init__(self, queue: JobQueue, interval_s: float = SYNC_INTERVAL_S) -> None:
        self.queue = queue
        self.interval_s = interval_s
        self.done = False
        self._checked = 0.0  # time.monotonic() of the last attach or check
        # The attach or check in flight: concurrent jobs wait for one, not one each.
        self._task: asyncio.Future[None] | None = None

    def _due(self) -> bool:
        return not self.done or time.monotonic() - self._checked >= self.interval_s

    def __call__(self, job_name: str, data: Any, options: Mapping[str, Any]) -> Any:
        task = self._task
        if options.get("tenant_id") is None or ((task is None or task.done()) and not self._due()):
            return job_name, data, options
        return self._attach(job_name, data, options)

    async def _attach(self, job_name: str, data: Any, options: Mapping[str, Any]) -> Any:
        task = self._task  # one in flight: waited for (a check registering the queue again)
        if (
            task is None
            or task.get_loop() is not asyncio.get_running_loop()
            or (task.done() and self._due())
        ):
            task = self._task = asyncio.ensure_future(self._run())
        await asyncio.shield(task)
        return job_name, data, options

    async def _run(self) -> None:
        if not self.done:
            await attach(self.queue)  # the first: its failure fails the job's add
            self.done, self._checked = True, time.monotonic()
            return
        self._checked = time.monotonic()
        try:
            client = await self.queue.client()
            if await client.exists(tk.registered(self.queue.keys)):
                return
            log.info(
                "queue %s: its tenancy registration is gone (its keys were deleted, the "
                "tenants' quota copies with them); registering it again",
                self.queue.name,
            )
            await attach(self.queue)
        except Exception as exc:  # the job is added all the same; checked again later
            log.warning(
                "queue %s: checking its tenancy registration failed (%s); again in %.0f s",
                self.queue.name,
                type(exc).__name__,
                self.interval_s,
            )


class _Sync:
    """Worker service: ``attach`` at start, then every ``SYNC_INTERVAL_S``."""

    name = "tenancy-sync"

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    async def start(self, queue: Any) -> None:
        self._task = asyncio.ensure_future(self._loop(queue))

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)  # again while a call took the cancel for its reply

    async def _loop(self, queue: Any) -> None:
        while True:
            try:
                _, names, retired = await _attach(queue)
                # Tickets and slots a process without tenancy left held (heal.py); a
                # removed tenant's too, so that nothing of it is left to keep its copy.
                await heal_tenants(queue, names)
                if retired and queue not in _NO_FORGET:
                    await _forget(queue, list(retired.values()))
            except TRANSIENT_ERRORS as exc:
                log.warning(
                    "queue %s: copying the tenants' quotas failed (%s); retrying in %.0f s",
                    queue.name,
                    type(exc).__name__,
                    self.interval_s,
                )
            except Exception:
                log.exception("queue %s: copying the tenants' quotas failed", queue.name)
            await asyncio.sleep(self.interval_s)


async def _forget(queue: Any, removed: list[StoredTenant]) -> None:
    """Tombstones this queue retired, copied into every registered queue, and dropped
    from the registry where every queue retired them (``propagate``). A Redis user that
    may not list the queues or write the registry leaves that to an administrator's
    ``TenantRegistry.sync()`` (remembered: not tried again)."""
    client = await queue.client()
    try:
        await propagate(client, queue.keys.prefix, removed)
    except NoPermissionError:
        _NO_FORGET.add(queue)
        log.info(
            "queue %s: the Redis user may not drop removed tenants from the registry; "
            "TenantRegistry.sync() with an administrator's connection does",
            queue.name,
        )


def installed(queue: Any) -> dict[str, Any] | None:
    """How tenancy is enabled on ``queue`` in this process (``quantum``,
    ``fair_dispatch``, ``enforce_quotas``, and the ``registry`` key it copies quotas
    from), or None when it is not."""
    have = _INSTALLED.get(queue)
    if have is None:
        return None
    return {
        "quantum": have[0],
        "fair_dispatch": have[1],
        "enforce_quotas": have[2],
        "registry": tk.registry(queue.keys.prefix),
    }


def install(
    queue: JobQueue,
    *,
    quantum: int,
    fair_dispatch: bool,
    enforce_quotas: bool = True,
    sync_interval_s: float = SYNC_INTERVAL_S,
) -> None:
    """Enable tenancy on one ``JobQueue`` (see the module docstring). Enabling it again
    with the same declarations does nothing; with others, ``ConfigurationError``."""
    quantum = to_int(quantum, "quantum", minimum=1, maximum=_MAX_QUANTUM)
    if (
        isinstance(sync_interval_s, bool)
        or not isinstance(sync_interval_s, (int, float))
        or not _MIN_SYNC_S <= sync_interval_s <= _MAX_SYNC_S
    ):
        raise ConfigurationError(
            f"sync_interval_s must be a number of seconds from {_MIN_SYNC_S:g} to "
            f"{_MAX_SYNC_S:g} (how often each worker re-copies the quotas), got "
            f"{sync_interval_s!r}"
        )
    for name, flag in (("fair_dispatch", fair_dispatch), ("enforce_quotas", enforce_quotas)):
        if not isinstance(flag, bool):
            raise ConfigurationError(f"{name} must be True or False, got {flag!r}")
    want = (quantum, fair_dispatch, enforce_quotas)
    have = _INSTALLED.get(queue)
    if have is not None:
        if have != want:
            raise ConfigurationError(
                f"multi-tenancy is already enabled on queue {queue.name!r} with quantum="
                f"{have[0]}, fair_dispatch={have[1]}, enforce_quotas={have[2]}; enable it "
                "once per queue, with the same arguments in every process"
            )
        return
    queue.declare_option(
        "tenant_id",
        feature=lua.FEATURE,
        normalize=lambda v, section: check_tenant_id(v, f"{section}: tenant_id"),
        doc="the tenant the job belongs to (features.tenancy)",
    )
    lua.add_fragments(queue.scripts, quantum, fair_dispatch, enforce_quotas)
    queue.scripts.add_fragment(HEAL_SCRIPT, lua.heal_script(quantum, fair_dispatch, enforce_quotas))
    queue.use_enqueue(_AttachOnFirstUse(queue, sync_interval_s))
    queue.add_service(_Sync(sync_interval_s))

    async def reset_counts() -> None:
        # clear() deleted every job: the tenants' counts, running sets and tickets go;
        # their quotas (copied from the registry) stay.
        client = await queue.client()
        doomed: list[Any] = []
        async for key in client.scan_iter(match=queue.keys.extra("tn-*"), count=500):
            doomed.append(key)
        async for key in client.scan_iter(match=queue.keys.extra("tn:*"), count=500):
            await client.hdel(key, "n", "rw", "rn", "done", "fail")
        for i in range(0, len(doomed), 500):
            await client.delete(*doomed[i : i + 500])
        # The settings go too (the next sync writes them again; until then a quota
        # change's lane refill is left to the heal): a cleared queue keeps no hash. Its
        # registration mark stays: a cleared queue stays registered (roster.py).
        await client.delete(tk.declarations(queue.keys))

    queue.admin.add_clear_step(reset_counts)
    _INSTALLED[queue] = want
