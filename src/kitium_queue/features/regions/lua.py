"""The Lua of the regions feature: slot fragments, its own scripts, and the layouts they
share with Python (the region record, the replication entry).

* ``fence.lua`` (slot ``fence``): a copy takes new jobs and hands jobs out only while it
  is the primary of its epoch with a running lease.
* ``enqueue.lua``, ``release.lua``, ``requeue.lua``, ``erase.lua`` (slots ``enqueue``,
  ``release``, ``requeue``, ``erase``; the primary's queue only): the epoch on each new
  job, and outbox entries for the replicator: a job added, a job that ended, attempts
  spent, a job requeued, a job erased.
* ``region.lua``: the record, votes and leases; ``rg_export.lua`` / ``rg_apply.lua``:
  jobs as replication entries, and their application to a copy; ``rg_sched.lua``:
  schedules copied to a copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from ...queue import JobQueue

__all__ = [
    "ENTRY",
    "FEATURE",
    "RECORD",
    "SCRIPTS",
    "install",
]

#: The name the fragments and scripts are registered under.
FEATURE = "regions"
#: The feature's own scripts (run through the queue's script registry).
SCRIPTS: Final = ("region", "rg_export", "rg_apply", "rg_sched")
#: ``region.lua``'s reply after status and detail: the record's fields, then ``now``.
RECORD: Final = (
    "self",
    "epoch",
    "primary",
    "lease",
    "vepoch",
    "vfor",
    "vuntil",
    "pos",
    "src",
    "down",
    "former",
    "now",
)
#: One replication entry (``rg_export.lua`` gives them, ``rg_apply.lua`` takes them).
ENTRY: Final = (
    "op",  # put | req | end | att | gone | erase
    "id",
    "name",
    "data",
    "opts",
    "priority",
    "lifo",  # '1' | '0'
    "created",  # ms, at the source
    "state",  # put: the state there; end: completed | failed | removed
    "due",  # delayed until (ms), '' none
    "attempts",
    "epoch",  # the epoch the job was accepted in
    "ikey",  # idempotency key, '' none
    "ittl",  # ms left of its window
    "payload",  # result (completed) or reason (failed, dlq); erase: the job's subject
    "finished",  # ms
    "keep_count",  # retention of the finished copy (-1 = keep, '' = keep)
    "keep_age",
    "at",  # when the source wrote what the entry carries (ms; '' = the call's floor)
    "seq",  # its outbox entry's sequence number within that ms ('' = 0): orders one ms
)


@cache
def _read(name: str) -> str:
    return resources.files(__package__).joinpath(f"{name}.lua").read_text("utf-8")


def fragment(slot: str) -> str:
    """The source of the fragment for ``slot`` (fence, enqueue, release, requeue, erase)."""
    return _read(slot).replace("@PRELUDE@", _read("prelude"))


def install(queue: JobQueue, *, replicated: bool) -> None:
    """Fill the slots of one copy and register the scripts. ``replicated``: the copy of
    the global queue (its new jobs and outcomes go to the outbox while it is the
    primary); a copy of a region's own queue gets the fence only."""
    queue.scripts.add_slot("fence", FEATURE, fragment("fence"))
    if replicated:
        for slot in ("enqueue", "release", "requeue", "erase"):
            queue.scripts.add_slot(slot, FEATURE, fragment(slot))
    for name in SCRIPTS:
        queue.scripts.add_fragment(name, _read(name))


def entry(**values: Any) -> list[Any]:
    """One replication entry as its fields (missing ones empty)."""
    unknown = set(values) - set(ENTRY)
    if unknown:
        raise KeyError(f"not fields of a replication entry: {sorted(unknown)}")
    return [values.get(name, "") for name in ENTRY]


def rows(flat: Sequence[Any]) -> list[dict[str, Any]]:
    """``rg_export.lua``'s flat reply as one dict per job (bytes values kept as bytes)."""
    n = len(ENTRY)
    return [dict(zip(ENTRY, flat[i : i + n], strict=True)) for i in range(0, len(flat), n)]
