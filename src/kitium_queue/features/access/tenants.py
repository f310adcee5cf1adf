"""Tenants through ``AccessControlManager``: every change authorized and audited.

``TenantAdmin`` keeps a ``TenantRegistry`` on the manager's connection and key prefix
(``AccessControlManager.tenants``) whose writer (``TenantWriter``) does two things
before a change reaches the registry:

1. **Authorization.** A tenant's quota applies in every queue tenancy is enabled on, so
   changing a tenant is managing every queue: the acting principal
   (``identity.current_principal()``, else the manager's ``principal``) needs
   ``can_manage_queue`` through a grant whose pattern matches every queue (``*``: the
   ``admin`` role, or ``{"can_manage_queue": True}``). Anyone else, and a call with no
   principal at all, is refused with ``AccessDeniedError`` after an ``access.denied``
   entry (resource ``tenant:<id>``) is in the audit log.
2. **The audit entry, atomically with the change.** The registry's entry is compared
   and set by the audit log's append script (``append.lua``, effect ``cas``) in the
   same call that appends ``tenant.create`` / ``tenant.update`` / ``tenant.remove``
   (who, resource ``tenant:<id>``, the new config: name, quota, regions, weight,
   version): both or neither. A tenant config holds no secret.

The writer runs for every change of that registry, so ``acm.tenants.create_tenant``
is held to the same rule as ``acm.create_tenant``. Reads (``get_tenant``,
``list_tenants``, ``get_tenant_quota``, ``get_tenant_usage``) are not guarded, as
``list_access`` is not: the manager is the administrators' tool.

**Grant changes** (``grant_access`` / ``revoke_access``) are held to the same rule when
a request names the principal: one set by ``acting_as`` (``identity.acting_context``)
needs ``can_manage_queue`` on every queue, else ``AccessDeniedError`` after an
``access.denied`` entry (resource: the pattern). The manager's own ``principal`` and no
principal at all are the trusted operator, who holds the manager and its audit key:
not checked, only recorded (``authorize_grants``).

The camelCase keys (``tenantId``, ``allowedRegions``, ``quota.maxQueueSize``,
``quota.maxConcurrency``, ``quota.rateLimit``) are accepted here (``brief_keys``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ...errors import AccessDeniedError
from ...identity import acting_context
from ...limits import clip
from ..audit.chain import Draft
from ..audit.log import Effect
from ..tenancy import TenantChange, TenantConfig, TenantRegistry, check_tenant_id
from ..tenancy.install import StoredTenant
from ..tenancy.model import check_tenant_name
from .model import Permission, renamed_keys

if TYPE_CHECKING:
    from .manager import AccessControlManager

__all__ = ["TENANT_PERMISSION", "TenantAdmin", "brief_keys", "tenant_resource"]

#: The permission tenant changes need, through a grant on every queue (``*``).
TENANT_PERMISSION = Permission.MANAGE_QUEUE
#: Compare-and-set attempts of one change before the registry is told to read again.
_CAS_TRIES = 5

_TOP = {"tenantId": "tenant_id", "allowedRegions": "allowed_regions"}
_QUOTA = {
    "maxQueueSize": "max_queue_size",
    "maxConcurrency": "max_concurrency",
    "rateLimit": "rate_limit",
}


def brief_keys(value: Any, where: str = "tenant config") -> Any:
    """``value`` with its camelCase keys in snake_case (a ``TenantConfig`` or a
    non-dict is returned as is, for ``TenantConfig.of`` to judge)."""
    if not isinstance(value, Mapping):
        return value
    out = renamed_keys(value, _TOP, where)
    if isinstance(out.get("quota"), Mapping):
        out["quota"] = renamed_keys(out["quota"], _QUOTA, f"{where}: quota")
    return out


def tenant_resource(tenant_id: str) -> str:
    """The audit log's resource for a tenant (``tenant:<id>``)."""
    return f"tenant:{tenant_id}"


def _meta(change: TenantChange) -> dict[str, Any]:
    """What the audit entry says of the change: the new config (a tenant config holds
    no secret) and its version."""
    if change.config is None:
        return {"tenant_id": change.tenant_id, "version": change.version}
    return {**change.config.to_dict(), "version": change.version}


class TenantAdmin:
    """The tenants of an ``AccessControlManager`` (see the module docstring).

    Args:
        manager: the manager whose connection, key prefix, grants, audit log and
            acting principal are used.
        who: the acting principal (the manager's rule: ``acting_as``, else its
            ``principal``).
    """

    def __init__(self, manager: AccessControlManager, who: Callable[[], str | None]) -> None:
        self.manager = manager
        self.who = who
        self.registry = TenantRegistry(manager.deployment, writer=self.write)

    # ------------------------------------------------------------------ authorization
    async def allowed(self, principal: str | None) -> bool:
        """Whether ``principal`` may change tenants (``can_manage_queue`` on ``*``)."""
        if principal is None:
            return False
        grants = await self.manager.grants.load(principal)
        return any(
            pattern.matches_all and TENANT_PERMISSION in perms
            for pattern, perms, _ in grants.entries
        )

    async def _deny(self, who: str | None, resource: str, action: str) -> tuple[str, str]:
        """Write the ``access.denied`` entry of ``who``'s refusal; returns what to add
        to the refusal's text: the patterns where it holds ``can_manage_queue``, and a
        note when the log could not take the entry."""
        via: tuple[str, ...] = ()
        if who is not None:
            grants = await self.manager.grants.load(who)
            via = tuple(p.text for p, perms, _ in grants.entries if TENANT_PERMISSION in perms)
        audited = await self.manager.write_denial(who, resource, TENANT_PERMISSION, action, via)
        held = f" (it holds it on {', '.join(via)} only)" if via else ""
        return held, "" if audited else " (the audit log could not record this refusal)"

    async def authorize_grants(self, action: str, pattern: str) -> str | None:
        """Who makes a grant change (``action`` on ``pattern``), for its audit entry.

        A principal set by ``acting_as`` (a request's) must hold ``can_manage_queue``
        on every queue, else ``AccessDeniedError`` after an ``access.denied`` entry;
        the manager's ``principal`` and no principal at all are the trusted operator
        (not checked)."""
        actor = acting_context()
        if actor is None:
            return self.who()
        if await self.allowed(actor):
            return actor
        held, note = await self._deny(actor, pattern, action)
        raise AccessDeniedError(
            f"principal {clip(repr(actor), 100)} was refused {action} on {pattern!r}: "
            "changing grants inside acting_as(...) needs can_manage_queue on every queue, "
            f"a grant on '*'{held}; run it as such an administrator, or from trusted code "
            "without acting_as (AccessControlManager(principal=...), or the shell's "
            f"kitium-queue access grant/revoke --as){note}",
            principal=actor,
            resource=pattern,
            permission=TENANT_PERMISSION.value,
            action=action,
        )

    async def authorize(self, action: str, tenant_id: str) -> str:
        """The acting principal, if it may change tenants; else ``AccessDeniedError``
        after an ``access.denied`` audit entry."""
        who = self.who()
        if who is not None and await self.allowed(who):
            return who
        resource = tenant_resource(tenant_id)
        held, note = await self._deny(who, resource, action)
        if who is None:
            text = (
                f"no principal is acting for {action} of tenant {tenant_id!r}: tenant changes "
                "are made by a principal holding can_manage_queue on every queue (a grant on "
                "'*'); run the call inside acting_as(...) or give AccessControlManager("
                f"principal=...){note}"
            )
        else:
            text = (
                f"principal {clip(repr(who), 100)} was refused {action} of tenant "
                f"{tenant_id!r}: a tenant's quota applies in every queue, so it needs "
                f"can_manage_queue on every queue, a grant on '*'{held}; an admin can grant "
                "it with AccessControlManager.grant_access(principal_id=..., "
                f"queue_pattern='*', role='admin'){note}"
            )
        raise AccessDeniedError(
            text,
            principal=who,
            resource=resource,
            permission=TENANT_PERMISSION.value,
            action=action,
        )

    # ------------------------------------------------------------------ the writer
    async def write(self, client: Any, change: TenantChange) -> str:
        """The registry's ``TenantWriter``: authorize, then compare-and-set the entry
        together with its audit entry (one script call)."""
        who = await self.authorize(f"{change.op}_tenant", change.tenant_id)
        draft_args = (
            who,
            f"tenant.{change.op}",
            tenant_resource(change.tenant_id),
            "ok",
            _meta(change),
        )
        for _ in range(_CAS_TRIES):
            raw = await client.hget(change.key, change.tenant_id)
            cur = StoredTenant.parse(change.tenant_id, raw)
            live = cur is not None and cur.config is not None
            if change.op == "create":
                if live:
                    return "exists"
            elif cur is None or not live:
                return "missing"
            elif cur.version != change.replaces:
                return "conflict"
            effect = Effect(
                "cas-new" if raw is None else "cas",
                change.key,
                change.key,
                change.tenant_id,
                change.body,
                b"" if raw is None else raw,
            )
            draft = Draft.make(*draft_args, strict=False)
            if await self.manager.audit.write([draft], effect=effect):
                return "ok"
            if change.op != "create":
                return "conflict"  # the registry reads it again
        return "conflict"

    # ------------------------------------------------------------------ the methods
    async def create(self, config: TenantConfig | Mapping[str, Any]) -> TenantConfig:
        """``TenantRegistry.create_tenant`` with camelCase keys too; authorized up front
        (a refused principal learns nothing of the deployment)."""
        cfg = TenantConfig.of(brief_keys(config))
        check_tenant_id(cfg.tenant_id)  # a new id: no look-alike (mixed scripts)
        check_tenant_name(cfg.name)  # nor a format character in its name
        await self.authorize("create_tenant", cfg.tenant_id)
        return await self.registry.create_tenant(cfg)

    async def update(
        self,
        tenant_id: str,
        changes: TenantConfig | Mapping[str, Any] | None,
        fields: Mapping[str, Any],
    ) -> TenantConfig:
        """``TenantRegistry.update_tenant`` with camelCase keys too (one that changes
        nothing writes nothing: no version, no ``tenant.update`` entry)."""
        given = brief_keys(changes, "tenant update")
        more = brief_keys(fields, "tenant update")
        await self.authorize("update_tenant", check_tenant_id(tenant_id, existing=True))
        return await self.registry.update_tenant(tenant_id, given, **more)

    async def remove(self, tenant_id: str) -> bool:
        """``TenantRegistry.remove_tenant``."""
        await self.authorize("remove_tenant", check_tenant_id(tenant_id, existing=True))
        return await self.registry.remove_tenant(tenant_id)
