"""Access control: grants of permissions and roles on queue patterns, enforced on the
queues a process opens as a principal, the deployment's tenants (changes authorized and
audited), and Redis ACL rules for isolation that holds against any client.

* ``model.py``: permissions, roles as bundles, ``AccessEntry``, and the permission
  each administrative command and each read needs;
* ``glob.py``: the queue pattern syntax (``acme-*``, ``[a-c]?``, ``[!t]*``);
* ``store.py``: grants in Redis, cached per process with a bounded TTL;
* ``enforce.py``: the admin guard, enqueue middleware and read guard of a protected
  queue;
* ``manager.py``: ``AccessControlManager``;
* ``tenants.py``: its tenants: the ``TenantRegistry`` writer that checks the principal
  and writes each change with its audit entry, and the brief's camelCase keys;
* ``redisacl.py``: ``redis_acl_rules``: Redis ACL users per tenant or queue;
* ``cli.py``: ``kitium-queue access ...`` and ``kitium-queue acl redis-rules``.

docs/access-control.md says what is enforced where (in-process vs Redis ACL).
"""

from .glob import QueuePattern
from .manager import AccessControlManager
from .model import (
    COMMAND_PERMISSIONS,
    READ_PERMISSIONS,
    ROLE_PERMISSIONS,
    AccessEntry,
    Permission,
    QueuePermissions,
    register_command,
    register_read,
)

__all__ = [
    "COMMAND_PERMISSIONS",
    "READ_PERMISSIONS",
    "ROLE_PERMISSIONS",
    "AccessControlManager",
    "AccessEntry",
    "Permission",
    "QueuePattern",
    "QueuePermissions",
    "register_command",
    "register_read",
]
