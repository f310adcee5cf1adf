"""An APP module that used its queue while it was imported (``asyncio.run(queue.add_job(
...))`` at its top level): the queue is then bound to an event loop that has ended, which
no command can share. ``cli/base.py`` records such an import (``record``) and turns the
error a command then meets into one that says what to move, and where (``failure``).
``refuse_manager`` says what to use for a GlobalQueueManager APP."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable
from typing import Any

import click

from ..queue import JobQueue

__all__ = ["MAIN_HINT", "failure", "import_hint", "record", "refuse_manager"]

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


def refuse_manager(app: str, obj: Any) -> None:
    """Refuse a ``GlobalQueueManager`` not initialized (as every APP is: a command cannot
    await its ``initialize``) where a command takes a queue, saying what to use."""
    # An APP holding a GlobalQueueManager has imported its module: no import here (the
    # common path of every command), and the CLI's core names no feature's class.
    mod = sys.modules.get("kitium_queue.features.regions.manager")
    manager = getattr(mod, "GlobalQueueManager", None)
    if manager is not None and isinstance(obj, manager) and obj.topo is None:
        raise click.BadParameter(
            f"{app!r} is a GlobalQueueManager: this command takes a JobQueue (to read one "
            "region's copy: a JobQueue of the queue's name on that region's Redis); for the "
            f"global queue use 'kitium-queue regions status {app}' (and regions failover, "
            "stranded, resubmit, discard); its workers run in a program that calls "
            "await manager.start()"
        )
