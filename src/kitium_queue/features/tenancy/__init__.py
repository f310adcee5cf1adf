"""Multi-tenancy: tenants with quotas and weighted fair dispatch between them.

``TenantRegistry`` keeps the tenants of a deployment and copies their quotas into every
queue tenancy is enabled on (``TenantRegistry(queue)`` or ``registry.enable(queue)``);
jobs name their tenant with the ``tenant_id`` option. ``max_queue_size`` is enforced at
enqueue (``QuotaExceededError``), ``max_concurrency`` and ``rate_limit`` at claim across
every worker, and tenants sharing a queue take turns in proportion to their ``weight``.
``AccessControlManager`` holds the deployment's registry with a writer that authorizes
and audits each change. See ``registry.py`` and ``docs/tenancy.md``.
"""

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
