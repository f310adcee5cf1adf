"""An APP module that used its queue while it was imported (``asyncio.run(queue.add_job(
...))`` at its top level): the queue is then bound to an event loop that has ended, which
no command can share. ``cli/base.py`` records such an import (``record``) and turns the
error a command then meets into one that says what to move, and where (``failure``).
``check_app`` runs the checks features add (``add_app_check``) on the APP object."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

from ..queue import JobQueue

__all__ = ["MAIN_HINT", "add_app_check", "check_app", "failure", "import_hint", "record"]

#: What to do, for a message about APP's import.
MAIN_HINT = ': code that calls asyncio.run or the queue goes under `if __name__ == "__main__":`'
#: APP's module when importing it connected one of its queues (``record``).
_USED_AT_IMPORT: list[str] = []


def import_hint(exc: BaseException) -> str:
    """``MAIN_HINT`` when APP's import failed on an event loop (asyncio.run in a running
    loop), else ""."""
    return MAIN_HINT if "event loop" in str(exc) else ""


def record(module_name: str, queues: Callable[[], Iterable[Any]]) -> None:
    """Remember whether the import of ``module_name`` connected one of ``queues()``
    (none to ask yet, as a GlobalQueueManager before ``initialize``: not connected)."""
    used = False
    with contextlib.suppress(Exception):
        used = any(isinstance(q, JobQueue) and q.ctx.connected for q in queues())
    _USED_AT_IMPORT[:] = [module_name] if used else []


def failure(exc: BaseException, text: str) -> str | None:
    """The message for ``exc`` (shown as ``text``) when it comes from a queue APP's
    import bound to its own event loop, else None."""
    if type(exc) is not RuntimeError or not _USED_AT_IMPORT or "another event loop" not in text:
        return None
    return (
        f"importing {_USED_AT_IMPORT[0]!r} used its queue in an event loop of its own "
        "(asyncio.run at the module's top level), which this command cannot share"
        f"{MAIN_HINT}, so that importing APP only builds the queue ({text.split(' (', 1)[0]})"
    )


#: Checks of an APP object before a command that takes a queue uses it: each raises
#: ``click.BadParameter`` saying what to use instead (a feature's CLI adds its own:
#: ``add_app_check``; the regions' one refuses a ``GlobalQueueManager``).
_APP_CHECKS: list[Callable[[str, Any], None]] = []


def add_app_check(check: Callable[[str, Any], None]) -> None:
    """Run ``check(app, obj)`` on every APP object a command that takes a queue loads."""
    if check not in _APP_CHECKS:
        _APP_CHECKS.append(check)


def check_app(app: str, obj: Any) -> None:
    """Run the APP checks (``add_app_check``) on ``obj``."""
    for check in _APP_CHECKS:
        check(app, obj)
