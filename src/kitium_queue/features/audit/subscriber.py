"""The lifecycle subscriber that writes every administrative command to the audit log.

``AuditLog.watch(queue)`` subscribes one to the queue's ``admin`` hook: each command
that passed the admin choke point (``Admin.execute``) becomes an entry: who
(``AdminCall.principal``), ``queue.<command>``, the queue, ``ok`` or ``error``, and
its arguments as the choke point reports them (ids, limits, flags; never payloads).
A command refused by access control is not written again here: the guard wrote its
``access.denied`` entry before refusing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...errors import AccessDeniedError
from ...hooks import AdminCall, Subscriber
from ...limits import clip, safe_text

if TYPE_CHECKING:
    from .log import AuditLog

__all__ = ["AdminAuditor"]


def _result(value: Any) -> Any:
    """What of a command's result goes into the entry: counts, flags, short text."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return clip(value, 200)
    if isinstance(value, (list, tuple)) and len(value) == 2:  # recover_stalled's ids
        return [len(v) if isinstance(v, (list, tuple)) else None for v in value]
    return None


class AdminAuditor(Subscriber):
    """Writes ``queue.<command>`` entries (see the module docstring)."""

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit

    def admin(self, call: AdminCall) -> None:
        if isinstance(call.error, AccessDeniedError):
            return
        meta: dict[str, Any] = {"args": call.args}
        if call.error is not None:
            meta["error"] = f"{type(call.error).__name__}: {clip(safe_text(call.error), 300)}"
        else:
            shown = _result(call.result)
            if shown is not None:
                meta["result"] = shown
        self.audit.record(
            call.principal,
            f"queue.{call.command}",
            call.queue,
            "error" if call.error is not None else "ok",
            meta,
        )
