"""Multi-tenancy: tenants with quotas and weighted fair dispatch between them.

``TenantRegistry`` keeps the tenants of a deployment and copies their quotas into every
queue tenancy is enabled on (``TenantRegistry(queue)`` or ``registry.enable(queue)``);
jobs name their tenant with the ``tenant_id`` option. ``max_queue_size`` is enforced at
enqueue (``QuotaExceededError``), ``max_concurrency`` and ``rate_limit`` at claim across
every worker, and tenants sharing a queue take turns in proportion to their ``weight``.
``AccessControlManager`` holds the deployment's registry with a writer that authorizes
and audits each change. See ``registry.py`` and ``docs/tenancy.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import load_lazily

if TYPE_CHECKING:
    from .model import (
        QueueUsage,
        RateLimit,
        TenantConfig,
        TenantQuota,
        TenantUsage,
        check_tenant_id,
        tenant_id_lookalike,
    )
    from .registry import TenantChange, TenantRegistry, TenantWriter

#: Public names, each imported on first use from the module that defines it.
_LAZY = {
    "QueueUsage": "model",
    "RateLimit": "model",
    "TenantConfig": "model",
    "TenantQuota": "model",
    "TenantUsage": "model",
    "check_tenant_id": "model",
    "tenant_id_lookalike": "model",
    "TenantChange": "registry",
    "TenantRegistry": "registry",
    "TenantWriter": "registry",
}

__all__ = [
    "QueueUsage",
    "RateLimit",
    "TenantChange",
    "TenantConfig",
    "TenantQuota",
    "TenantRegistry",
    "TenantUsage",
    "TenantWriter",
    "check_tenant_id",
    "tenant_id_lookalike",
]


if not TYPE_CHECKING:  # a type checker sees the names above, and flags any other

    def __getattr__(name: str) -> Any:
        return load_lazily(__name__, __path__, _LAZY, name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
