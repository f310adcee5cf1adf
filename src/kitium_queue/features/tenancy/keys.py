"""Every Redis key of multi-tenancy (the Lua in ``prelude.lua`` builds the same names).

Deployment keys (one set per key prefix, under the deployment-wide hash tag
``{!access}`` that no queue name can hold, shared with access control and the audit log:
``features/audit/conn.py``), written by ``TenantRegistry`` and by a queue registering
itself; the scripts of queues never read them:

* ``<prefix>:{!access}:tenants``          HASH  tenant id -> its config as JSON, with its
  version (a removed tenant stays as a tombstone ``{"removed": true, "version": ...}``
  until every queue's copy of it is retired: ``install.propagate``);
* ``<prefix>:{!access}:tenants:queues``   SET   the queues tenancy is enabled on (each
  adds itself; a queue none of whose keys is left, ``presence``, is taken out by the
  registry's readers: ``roster.live_queues``);
* ``<prefix>:{!access}:tenants:version``  STRING the version counter (one per change).

Queue keys (``QueueKeys.extra``: under the queue's hash tag, so every script stays
cluster-safe): ``tn:<t>`` (HASH: the copy of the tenant's quota and its counts; a
removed tenant's, its tombstone, refuses late copies of older versions and expires
``TOMBSTONE_TTL_S`` after nothing of it is left: ``tn_put.lua``),
``tn-run:<t>``, ``tn-tk:<t>`` (SETs: running jobs, ticket holders in wait), ``tenants``
(ZSET index of the tenants set up in the queue),
``tenancy`` (HASH: how the queue's processes enable tenancy, ``quantum``, ``fair``,
``quotas``, written by each at its sync: ``tn_put.lua`` refills lanes by them),
``tenancy:registered`` (STRING: written by each registration, before the queue adds
itself to the registry's set, and kept by ``clear()``: the queue is there, tenants or
jobs or not), and the tenant's lane ``parked:t:<t>`` (``QueueKeys.parked``).
"""

from __future__ import annotations

from ...keys import QueueKeys
from ..audit.conn import DEPLOYMENT_TAG

__all__ = [
    "LANE_PREFIX",
    "declarations",
    "index",
    "lane",
    "presence",
    "registered",
    "registry",
    "registry_queues",
    "registry_version",
    "running",
    "tenant",
    "tickets",
]

#: The blocker of a tenant's lane is ``t:<tenant>`` (``lib_parking.lua``).
LANE_PREFIX = "t:"


def registry(prefix: str) -> str:
    """HASH: tenant id -> its config JSON (the canonical copy)."""
    return f"{prefix}:{{{DEPLOYMENT_TAG}}}:tenants"


def registry_queues(prefix: str) -> str:
    """SET: names of the queues tenancy is enabled on."""
    return registry(prefix) + ":queues"


def registry_version(prefix: str) -> str:
    """STRING: the version counter of tenant changes."""
    return registry(prefix) + ":version"


def tenant(keys: QueueKeys, tenant_id: str) -> str:
    """HASH: the tenant's quota in this queue (copied) and its counts."""
    return keys.extra(f"tn:{tenant_id}")


def running(keys: QueueKeys, tenant_id: str) -> str:
    """SET: ids of the tenant's running jobs in this queue."""
    return keys.extra(f"tn-run:{tenant_id}")


def tickets(keys: QueueKeys, tenant_id: str) -> str:
    """SET: ids of the tenant's jobs in wait holding a dispatch ticket."""
    return keys.extra(f"tn-tk:{tenant_id}")


def index(keys: QueueKeys) -> str:
    """ZSET: the tenants set up in this queue (score 0, in name order)."""
    return keys.extra("tenants")


def declarations(keys: QueueKeys) -> str:
    """HASH: the queue's tenancy declarations (``quantum``, ``fair``, ``quotas``: '1' or
    '0'), as its processes enable it, written again at each sync; ``clear()`` deletes
    it with the counts."""
    return keys.extra("tenancy")


def registered(keys: QueueKeys) -> str:
    """STRING: the queue registered with the tenant registry (written by every
    registration, before the queue adds itself to ``registry_queues``; ``clear()`` keeps
    it, as the queue stays registered)."""
    return keys.extra("tenancy:registered")


def presence(keys: QueueKeys) -> list[str]:
    """The keys of which one at least exists while the queue is there: its shared
    layout (job states, meta, events, the id and lease counters), its parked jobs, its
    schedules, its tenants index, declarations and registration. None of them left (the
    queue's keys deleted): the registry's readers take it out of ``registry_queues``
    and copy nothing into it (``roster.live_queues``, ``tn_put.lua``)."""
    return [
        *keys.all,
        keys.parked_index,
        keys.schedules,
        index(keys),
        declarations(keys),
        registered(keys),
    ]


def lane(keys: QueueKeys, tenant_id: str) -> str:
    """ZSET: the tenant's lane (its parked jobs)."""
    return keys.parked(LANE_PREFIX + tenant_id)


def usage(keys: QueueKeys, tenant_id: str) -> list[str]:
    """The keys ``tn_usage.lua`` reads (KEYS[1..4]): the tenant's hash, running set,
    tickets and lane."""
    return [
        tenant(keys, tenant_id),
        running(keys, tenant_id),
        tickets(keys, tenant_id),
        lane(keys, tenant_id),
    ]
