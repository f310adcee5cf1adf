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
  and writes each change with its audit entry, and the camelCase keys;
* ``redisacl.py``: ``redis_acl_rules``: Redis ACL users per tenant or queue;
* ``cli.py``: ``kitium-queue access ...`` and ``kitium-queue acl redis-rules``.

docs/access-control.md says what is enforced where (in-process vs Redis ACL).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import load_lazily

if TYPE_CHECKING:
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

#: Public names, each imported on first use from the module that defines it.
_LAZY = {
    "QueuePattern": "glob",
    "AccessControlManager": "manager",
    "COMMAND_PERMISSIONS": "model",
    "READ_PERMISSIONS": "model",
    "ROLE_PERMISSIONS": "model",
    "AccessEntry": "model",
    "Permission": "model",
    "QueuePermissions": "model",
    "register_command": "model",
    "register_read": "model",
}

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


if not TYPE_CHECKING:  # a type checker sees the names above, and flags any other

    def __getattr__(name: str) -> Any:
        return load_lazily(__name__, __path__, _LAZY, name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
