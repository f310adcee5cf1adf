"""What ``AccessControlManager.protect(queue)`` installs on a queue, and why a caller
cannot forget a check.

Three choke points of the core, each with the same question — may the principal acting
(``identity.current_principal``, else the queue's ``principal``) do this here?

* an **admin guard** (``queue.admin.add_guard``): every administrative command, with
  the permission its name maps to (``model.COMMAND_PERMISSIONS``; unknown commands need
  ``can_manage_queue``);
* **enqueue middleware**, first in the chain: ``add_job`` / ``add_jobs`` and schedule
  templates need ``can_add_job``;
* a **read guard** (``queue.queries.add_guard``): every read of jobs, logs, counts,
  events, schedules and explanations, and every feature's read (group stats, breaker
  state, webhook deliveries, workflow status, stored results, encryption status, ...), with
  the permission its name maps to (``model.READ_PERMISSIONS``: ``can_view_job``;
  unknown reads need ``can_manage_queue``).

A call with no principal at all is refused (fail closed). A refusal raises
``AccessDeniedError`` after the audit log has the ``access.denied`` entry (or, past the
first ones of a window for the same principal, action and queue, has counted it for
the window's summary entry: ``audit/refusals.py``); nothing of the call has run.
Allowed calls cost a dictionary lookup while the principal's grants are cached
(``GrantStore``); the enqueue path then stays synchronous. Administrative commands
are recorded by the audit log's subscriber (``AuditLog.watch``).

What this does not bind: code that talks to Redis without the library, and a worker's
own processing (claims and outcomes are scripts of the worker, not calls of a
principal). Redis ACL users (``redisacl.py``) bind both.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any

from ...guards import ReadCall
from ...hooks import AdminCall
from ...identity import current_principal
from .model import Permission, command_permission, read_permission

if TYPE_CHECKING:
    from ...queue import JobQueue
    from .manager import AccessControlManager

__all__ = ["Protection"]

JobTuple = tuple[str, Any, Mapping[str, Any]]


class Protection:
    """The guards and middleware of one protected queue."""

    def __init__(self, manager: AccessControlManager, queue: JobQueue) -> None:
        self.manager = manager
        self.queue = queue
        self.name = queue.name

    def install(self) -> None:
        q = self.queue
        q.admin.add_guard(self.admin_guard)
        # First in the chain: a refused job costs no other middleware's work.
        q.enqueue_middleware.insert(0, self.enqueue)
        q.queries.add_guard(self.read_guard)

    def uninstall(self) -> None:
        q = self.queue
        q.admin.remove_guard(self.admin_guard)
        q.enqueue_middleware[:] = [m for m in q.enqueue_middleware if m != self.enqueue]
        q.queries.remove_guard(self.read_guard)

    async def admin_guard(self, call: AdminCall) -> None:
        await self.manager.enforce(
            call.principal, self.name, command_permission(call.command), call.command
        )

    def read_guard(self, call: ReadCall) -> Awaitable[None] | None:
        # Synchronous while the principal's grants are cached and allow it: reads are
        # frequent (a dashboard polls), so an allowed one costs a dictionary lookup.
        perm = read_permission(call.query)
        if self.manager.allowed_now(call.principal, self.name, perm):
            return None
        return self.manager.enforce(call.principal, self.name, perm, call.query)

    def enqueue(
        self, job_name: str, data: Any, options: Mapping[str, Any]
    ) -> JobTuple | Awaitable[JobTuple]:
        who = current_principal(self.queue.ctx.principal)
        if self.manager.allowed_now(who, self.name, Permission.ADD_JOB):
            return job_name, data, options
        return self._enqueue_checked(who, job_name, data, options)

    async def _enqueue_checked(
        self, who: str | None, job_name: str, data: Any, options: Mapping[str, Any]
    ) -> JobTuple:
        await self.manager.enforce(who, self.name, Permission.ADD_JOB, "add_job")
        return job_name, data, options
