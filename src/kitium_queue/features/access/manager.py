"""``AccessControlManager``: grants, checks, enforcement on queues, tenants, and the
audit log.

It spans queues, so it takes a connection (``redis=`` as ``JobQueue`` takes it, or a
``JobQueue`` whose connection and prefix it uses). Grants live in Redis, shared by
every process (``store.py``); each process caches a principal's grants for
``cache_ttl`` ms, the bound within which a revoke made elsewhere takes effect.
``protect(queue)`` makes a queue refuse what its principal may not do
(``enforce.py``). Tenants (``create_tenant`` ...) are the deployment's
``TenantRegistry``, with every change authorized and audited (``tenants.py``). Every
grant change, tenant change, refusal and administrative command of a protected queue is
written to the audit log (``features/audit``), whose MAC key (``audit_key``) the
application holds.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any, NoReturn, TypeVar

from ...errors import AccessDeniedError, ConfigurationError
from ...identity import check_principal, current_principal
from ...keys import check_key_part
from ...limits import clip, get_logger
from ...options import to_int, to_ms
from ..audit import AuditEntry, AuditHead, AuditLog, AuditReport
from ..audit.conn import Deployment
from ..audit.refusals import RefusalBound
from ..tenancy import TenantConfig, TenantQuota, TenantRegistry, TenantUsage
from .enforce import Protection
from .glob import QueuePattern
from .model import AccessEntry, Permission, parse_permission
from .store import GrantStore
from .tenants import TenantAdmin

__all__ = ["AccessControlManager"]

log = get_logger(__name__)

T = TypeVar("T")

#: The namespaces of the actions the library writes (``access.grant``, ``audit.retention``,
#: ``queue.pause``, ``tenant.create``...): ``audit_access`` refuses them.
_LIBRARY_ACTIONS = frozenset({"access", "audit", "queue", "tenant"})
#: Queues protected in this process -> their protection (one manager per queue).
_PROTECTED: weakref.WeakKeyDictionary[Any, Protection] = weakref.WeakKeyDictionary()


def _queues_of(target: Any) -> list[Any]:
    """The ``JobQueue`` objects behind ``target``: itself, a façade's ``queues``
    (partitioned queues), or a synchronous client's ``queue``."""
    from ...queue import JobQueue

    if isinstance(target, JobQueue):
        return [target]
    inner = getattr(target, "queues", None)
    if isinstance(inner, (list, tuple)) and inner and all(isinstance(q, JobQueue) for q in inner):
        return list(inner)
    one = getattr(target, "queue", None)
    if one is not None and one is not target:
        return _queues_of(one)
    raise ConfigurationError(
        f"protect() takes a JobQueue, a PartitionedQueue or a SyncJobQueue, got "
        f"{type(target).__name__}"
    )


class AccessControlManager:
    """Access control and audit for every queue of a deployment.

    Args:
        redis: as ``JobQueue`` takes it (URL, dict, client), or a ``JobQueue`` whose
            connection and key prefix are used.
        audit_key: the audit log's MAC key (bytes or str, at least 16 bytes, e.g.
            ``secrets.token_hex(32)`` kept in your secret store). Required: every grant
            change and refusal is audited. Never written to Redis.
        audit_previous_keys: earlier audit keys (entries they signed still verify).
        prefix: key prefix (default: the queue's, or ``"kq"``).
        cache_ttl: how long (ms or timedelta) a process trusts the grants it read;
            a revoke made by another process takes effect here within it (5000).
            0: read Redis on every check.
        audit_max_age, audit_max_entries: the audit log's retention (``trim``).
        principal: who the manager acts for when no ``acting_as`` block is active:
            recorded as the author of grant changes (the trusted operator: not
            checked, unlike an ``acting_as`` principal), and the principal whose grants
            decide tenant changes.
        refusal_burst, refusal_window: the bound on ``access.denied`` entries: per
            (principal, action, queue), the first ``refusal_burst`` refusals of each
            ``refusal_window`` (ms or timedelta) are an entry each; later ones in the
            window are counted, and the count is one entry at the window's end
            (10 per 10 s; ``audit/refusals.py``).

    Example::

        acm = AccessControlManager("redis://localhost:6379/0", audit_key=key,
                                   principal="platform-admin")
        await acm.grant_access({"principal_id": "platform-admin", "queue_pattern": "*",
                                "role": "admin"})
        await acm.create_tenant({"tenant_id": "acme", "quota": {"max_queue_size": 1000}})
        await acm.grant_access({"principal_id": "alice@acme.com",
                                "queue_pattern": "acme-*", "role": "operator"})
        queue = acm.protect(JobQueue("acme-orders", redis=..., principal="alice@acme.com"))
        await queue.retry_job("42")      # allowed: operators retry
        await queue.pause()              # AccessDeniedError (and an audit entry)
    """

    def __init__(
        self,
        redis: Any = "memory://",
        *,
        audit_key: bytes | str | None = None,
        audit_previous_keys: Sequence[bytes | str] = (),
        prefix: str | None = None,
        cache_ttl: int | timedelta = 5000,
        audit_max_age: int | timedelta | None = None,
        audit_max_entries: int | None = None,
        principal: str | None = None,
        refusal_burst: int = 10,
        refusal_window: int | timedelta = 10_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if audit_key is None:
            raise ConfigurationError(
                "AccessControlManager needs audit_key=: the secret (at least 16 bytes, e.g. "
                "secrets.token_hex(32) from your secret store) that signs the audit log of "
                "grant changes, refusals and administrative commands"
            )
        self.deployment = Deployment(redis, prefix, name="access control")
        self.audit = AuditLog(
            self.deployment,
            key=audit_key,
            previous_keys=audit_previous_keys,
            max_age=audit_max_age,
            max_entries=audit_max_entries,
        )
        self.refusals = RefusalBound(
            self.audit,
            burst=to_int(refusal_burst, "refusal_burst", minimum=1, maximum=100_000),
            window_ms=to_ms(refusal_window, "refusal_window", minimum=1, maximum=86_400_000),
        )
        ttl = to_ms(cache_ttl, "cache_ttl", minimum=0, maximum=3_600_000)
        self.grants = GrantStore(self.deployment, self.audit, cache_ttl_ms=ttl, monotonic=monotonic)
        self.principal = None if principal is None else check_principal(principal)
        self._tenants = TenantAdmin(self, self.acting)

    def acting(self) -> str | None:
        """The principal a call of the manager runs for: the innermost ``acting_as``
        block, else the manager's ``principal``."""
        return current_principal(self.principal)

    # ------------------------------------------------------------------ grants
    async def grant_access(
        self, entry: AccessEntry | Mapping[str, Any] | None = None, /, **fields: Any
    ) -> AccessEntry:
        """Grant ``entry`` (an ``AccessEntry``, a dict, or its fields as keywords):
        ``principal_id`` may do ``permissions`` (and what ``role`` bundles) on every
        queue matching ``queue_pattern``. A grant on the same (principal, pattern)
        replaces the earlier one. Written to Redis together with an ``access.grant``
        audit entry (who granted it: ``acting()``). Returns the stored grant.
        Inside ``acting_as(p)``, ``p`` needs ``can_manage_queue`` on every queue, else
        ``AccessDeniedError`` (audited); the manager's ``principal`` and no principal
        are the trusted operator (``TenantAdmin.authorize_grants``).
        ``ConfigurationError`` for a principal whose letters mix scripts (a look-alike
        of another name, ``identity.check_principal``)."""
        if entry is not None and fields:
            raise ConfigurationError("give the grant as one entry or as keywords, not both")
        parsed = AccessEntry.parse(entry if entry is not None else fields)
        check_principal(parsed.principal_id)  # a new grant: no look-alike name
        who = await self._tenants.authorize_grants("grant_access", parsed.queue_pattern)
        return await self.grants.put(parsed, who)

    async def revoke_access(self, principal_id: str, queue_pattern: str) -> bool:
        """Remove the grant of ``principal_id`` on ``queue_pattern`` (the pattern exactly
        as granted), with an ``access.revoke`` audit entry. False when there was none
        (then nothing is written). Other processes stop honouring it within
        ``cache_ttl``. A principal stored before the script rule can be revoked.
        Authorized as ``grant_access``."""
        principal = check_principal(principal_id, existing=True)
        pattern = QueuePattern(queue_pattern).text
        who = await self._tenants.authorize_grants("revoke_access", pattern)
        return await self.grants.delete(principal, pattern, who)

    async def list_access(self, principal_id: str | None = None) -> list[AccessEntry]:
        """The grants of ``principal_id``, or of everyone (by principal, then pattern).
        A grant whose principal's letters mix scripts (stored before that was refused)
        is listed, with ``AccessEntry.lookalike`` saying what it mixes."""
        if principal_id is not None:
            return await self.grants.read(check_principal(principal_id, existing=True))
        out: list[AccessEntry] = []
        for p in await self.grants.principals():
            out += await self.grants.read(p)
        return out

    # ------------------------------------------------------------------ tenants
    @property
    def tenants(self) -> TenantRegistry:
        """The deployment's ``TenantRegistry`` (this manager's connection and key
        prefix). Its changes are authorized and audited like the methods below;
        ``tenants.enable(queue)`` turns tenancy on for a queue."""
        return self._tenants.registry

    async def create_tenant(self, config: TenantConfig | Mapping[str, Any]) -> TenantConfig:
        """Create a tenant: a ``TenantConfig`` or a dict
        with ``tenant_id``, ``name``, ``quota`` {``max_queue_size``,
        ``max_concurrency``, ``rate_limit``}, ``allowed_regions``, ``weight`` (the
        brief's camelCase keys too). Needs ``can_manage_queue`` on every queue (a grant
        on ``*``) for the acting principal, else ``AccessDeniedError`` (audited);
        written with its ``tenant.create`` audit entry, atomically. Its quota reaches
        every queue tenancy is enabled on before this returns. ``ConfigurationError``
        if it exists."""
        return await self._tenants.create(config)

    async def update_tenant(
        self,
        tenant_id: str,
        changes: TenantConfig | Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> TenantConfig:
        """Change a tenant (``TenantRegistry.update_tenant``: a ``quota`` dict changes
        the limits it names); authorized and audited (``tenant.update``) as
        ``create_tenant``. ``TenantNotFoundError`` if there is no such tenant. An
        update that changes nothing writes nothing (no version, no audit entry)."""
        return await self._tenants.update(tenant_id, changes, fields)

    async def remove_tenant(self, tenant_id: str) -> bool:
        """Remove a tenant: queues refuse its new jobs, the ones it has run to their
        end; authorized and audited (``tenant.remove``). False (nothing written) if
        there was no such tenant."""
        return await self._tenants.remove(tenant_id)

    async def get_tenant(self, tenant_id: str) -> TenantConfig | None:
        """The tenant's config, or None."""
        return await self._tenants.registry.get_tenant(tenant_id)

    async def list_tenants(self) -> list[TenantConfig]:
        """Every tenant, by id."""
        return await self._tenants.registry.list_tenants()

    async def allowed_regions_for(self, tenant_id: str) -> tuple[str, ...] | None:
        """The tenant's regions (``None``: any), from its registry: this manager is a
        region lookup for multi-region routing (``GlobalQueueManager``'s ``tenants``
        setting). Raises ``TenantNotFoundError`` for an unknown tenant."""
        return await self._tenants.registry.allowed_regions_for(tenant_id)

    async def get_tenant_quota(self, tenant_id: str) -> TenantQuota:
        """The tenant's quota; ``TenantNotFoundError``
        if there is no such tenant."""
        return await self._tenants.registry.get_tenant_quota(tenant_id)

    async def get_tenant_usage(
        self, tenant_id: str, queues: Iterable[str] | None = None
    ) -> TenantUsage:
        """What the tenant uses now (queued, active, held, rate used, completed,
        failed), per queue and in total (``TenantRegistry.get_tenant_usage``; a removed
        tenant's leftovers too). ``TenantNotFoundError`` for a tenant the registry does
        not know with nothing in the queues (a mistyped id, with the closest one)."""
        return await self._tenants.registry.get_tenant_usage(tenant_id, queues)

    # ------------------------------------------------------------------ checks
    async def permissions_on(self, principal_id: str, queue_name: str) -> frozenset[Permission]:
        """Everything ``principal_id`` may do on queue ``queue_name`` (the union of
        its matching grants, implied permissions included). A question about stored
        grants: a principal stored before the script rule is answered too."""
        principal = check_principal(principal_id, existing=True)
        check_key_part(queue_name, "queue name")
        return (await self.grants.load(principal)).on(queue_name)[0]

    async def check_access(
        self, principal_id: str, queue_name: str, permission: Permission | str
    ) -> bool:
        """Whether ``principal_id`` holds ``permission`` (``"can_add_job"``,
        ``Permission.VIEW_JOB``, camelCase ``"canAddJob"``...) on queue
        ``queue_name``. A question, not an access: nothing is audited (use
        ``require_access`` to enforce)."""
        perm = parse_permission(permission)
        return perm in await self.permissions_on(principal_id, queue_name)

    async def require_access(
        self,
        principal_id: str | None,
        queue_name: str,
        permission: Permission | str,
        *,
        action: str = "access",
    ) -> None:
        """Raise ``AccessDeniedError`` (after writing an ``access.denied`` audit entry)
        unless ``principal_id`` holds ``permission`` on ``queue_name``; for the
        application's own checks (``action`` names what was attempted)."""
        who = None if principal_id is None else check_principal(principal_id)
        check_key_part(queue_name, "queue name")
        await self.enforce(who, queue_name, parse_permission(permission), action)

    def allowed_now(self, principal: str | None, queue: str, perm: Permission) -> bool:
        """True when the cached grants allow it (False also means "not cached")."""
        if principal is None:
            return False
        grants = self.grants.cached(principal)
        return grants is not None and perm in grants.on(queue)[0]

    async def enforce(
        self, principal: str | None, queue: str, perm: Permission, action: str
    ) -> None:
        """Let the call through, or refuse it (audited) with ``AccessDeniedError``."""
        if principal is None:
            self._refuse(
                None,
                queue,
                perm,
                action,
                await self.write_denial(None, queue, perm, action, ()),
            )
        grants = await self.grants.load(principal)
        perms, via = grants.on(queue)
        if perm in perms:
            return
        self._refuse(
            principal,
            queue,
            perm,
            action,
            await self.write_denial(principal, queue, perm, action, via),
        )

    async def write_denial(
        self,
        principal: str | None,
        queue: str,
        perm: Permission,
        action: str,
        via: tuple[str, ...],
    ) -> bool:
        """Write the ``access.denied`` entry of a refusal of ``action`` on resource
        ``queue`` (a queue, or ``tenant:<id>``), or count it once the window holds its
        entries (``refusal_burst``); False when the log could not take it (the refusal
        stands either way)."""
        meta = {"action": action, "permission": perm.value, "grants": list(via)}
        try:
            await self.refusals.deny(principal, queue, meta)
        except Exception as exc:  # the refusal stands either way
            log.error(
                "access: the refusal of %s on queue %s could not be audited (%s: %s)",
                clip(str(principal), 100),
                queue,
                type(exc).__name__,
                exc,
            )
            return False
        return True

    @staticmethod
    def _refuse(
        principal: str | None, queue: str, perm: Permission, action: str, audited: bool
    ) -> NoReturn:
        note = "" if audited else " (the audit log could not record this refusal)"
        if principal is None:
            text = (
                f"no principal is acting for {action} on queue {queue!r}, which is protected "
                "by access control: name one with JobQueue(..., principal=...) or run the "
                f"call inside acting_as(...){note}"
            )
        else:
            text = (
                f"principal {clip(repr(principal), 100)} was refused {action} on queue "
                f"{queue!r}: it needs {perm.value} there and none of its grants gives that; "
                f"an admin can grant it with AccessControlManager.grant_access{note}"
            )
        raise AccessDeniedError(
            text, principal=principal, resource=queue, permission=perm.value, action=action
        )

    # ------------------------------------------------------------------ enforcement
    def protect(self, queue: T, *, principal: str | None = None) -> T:
        """Make ``queue`` (a ``JobQueue``, each partition of a ``PartitionedQueue``, or
        a ``SyncJobQueue``'s queue) refuse what the acting principal may not do, and
        audit its administrative commands; returns ``queue``.

        ``principal``: who the queue acts for when no ``acting_as`` block is active
        (sets the queue's ``principal``). Calls with no principal at all are refused.
        Protecting a queue again with the same manager is a no-op; with another
        manager it is refused.
        """
        who = None if principal is None else check_principal(principal)
        for q in _queues_of(queue):
            prot = _PROTECTED.get(q)
            if prot is not None and prot.manager is not self:
                raise ConfigurationError(
                    f"queue {q.name!r} is protected by another AccessControlManager already"
                )
            if who is not None:
                q.ctx.principal = who
            if prot is None:
                prot = Protection(self, q)
                prot.install()
                self.audit.watch(q)
                _PROTECTED[q] = prot
        return queue

    @staticmethod
    def protection_of(queue: Any) -> Protection | None:
        """The protection installed on ``queue`` in this process, if any."""
        return _PROTECTED.get(queue)

    # ------------------------------------------------------------------ audit
    async def audit_access(
        self,
        principal_id: str | None,
        action: str,
        resource: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        outcome: str = "ok",
    ) -> str:
        """Write the application's own audit entry (``audit_access``) and
        wait until it is in Redis; returns its id. ``metadata``: ids and short facts
        (at most 4 KiB as JSON; never payloads; values of keys naming secrets are
        replaced by ``***``). ``action`` may not be in a namespace the library writes
        (``access.*``, ``audit.*``, ``queue.*``, ``tenant.*``): an entry of yours
        would read as one of its own (``ConfigurationError``)."""
        who = None if principal_id is None else check_principal(principal_id)
        if isinstance(action, str) and action.split(".", 1)[0].lower() in _LIBRARY_ACTIONS:
            raise ConfigurationError(
                f"audit action {clip(repr(action), 80)} is in a namespace the library "
                f"writes ({', '.join(f'{n}.*' for n in sorted(_LIBRARY_ACTIONS))}): an "
                "entry of yours would read as one of its own (a grant, a refusal, a "
                "tenant change); name your action another way, e.g. 'app."
                + action[:40]
                + "' or 'export_report'"
            )
        return await self.audit.append(who, action, resource, outcome, metadata)

    async def query_audit_log(self, **filters: Any) -> list[AuditEntry]:
        """Audit entries by ``principal``, ``action``, ``resource``, ``outcome`` and
        time range (``since`` / ``until``), newest first: ``AuditLog.query`` (page by
        page: ``acm.audit.query_page``, with ``cursor=``)."""
        return await self.audit.query(**filters)

    async def verify_audit_log(self, *, checkpoint: AuditHead | None = None) -> AuditReport:
        """Check the audit chain; the report names the first entry altered, removed or
        inserted (``AuditLog.verify``)."""
        await self.audit.flush()
        return await self.audit.verify(checkpoint=checkpoint)

    async def flush_refusals(self) -> int:
        """Write the summary entry of every window of counted refusals that is over,
        whichever process counted them (a process that died leaves its counts in Redis
        for this); returns how many were written. Run it from a scheduled job too."""
        return await self.refusals.flush()

    async def close(self) -> None:
        """Sum up the refusals this process counted, write the audit entries still
        queued, then release the connection."""
        await self.refusals.close()
        await self.audit.close()
