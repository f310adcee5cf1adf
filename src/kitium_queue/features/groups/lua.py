"""The Lua of FIFO message groups: slot fragments and the feature's own scripts.

The fragments (``accept.lua``, ``enqueue.lua``, ``admission.lua``, ``release.lua``,
``duplicate.lua``) share
``prelude.lua``, into which the manager's declarations are compiled, so every process
that declares the same groups runs the same code. See ``docs/groups.md``.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

__all__ = [
    "ADMISSION_FIELDS",
    "DUPLICATE_ORDERS",
    "FEATURE",
    "MAX_GROUP_ID",
    "SCRIPTS",
    "fragments",
    "script",
]

#: The name the fragments, options and scripts are registered under.
FEATURE = "fifo-groups"
#: Longest group id, in characters (ids end up in key names and log lines).
MAX_GROUP_ID = 256
#: Job-hash fields claim reads for the admission check: the job's group, whether it is
#: counted in the group's size.
ADMISSION_FIELDS = ("gk", "gm")
#: The places of the duplicate slot's two fragments: around the fragment (order 0) that
#: acts on the job an idempotency key points to (a debounce moving it to delayed).
DUPLICATE_ORDERS = {"duplicate-before": -10, "duplicate-after": 10}
#: The feature's own scripts (run through the queue's script registry).
SCRIPTS = ("group_admin", "group_stats", "group_heal")


@cache
def _read(name: str) -> str:
    return resources.files(__package__).joinpath(f"{name}.lua").read_text("utf-8")


def _prelude(default_concurrency: int, default_max_size: int, count: bool) -> str:
    return (
        _read("prelude")
        .replace("@DEFAULT_CONC@", str(int(default_concurrency)))
        .replace("@DEFAULT_MAX@", str(int(default_max_size)))
        .replace("@COUNT@", "true" if count else "false")
        # Lua's # counts bytes: up to 4 per character.
        .replace("@MAX_GROUP_ID@", str(MAX_GROUP_ID * 4))
    )


def fragments(default_concurrency: int, default_max_size: int, count: bool) -> dict[str, str]:
    """The source of each slot fragment for these declarations (``accept`` only when
    groups are counted: without counts there is no ``max_group_size`` to enforce), and
    the two fragments of the duplicate slot (``duplicate-before``, ``duplicate-after``)."""
    prelude = _prelude(default_concurrency, default_max_size, count)
    slots = (
        ("accept", "enqueue", "admission", "release")
        if count
        else ("enqueue", "admission", "release")
    )
    frags = {slot: _read(slot).replace("@PRELUDE@", prelude) for slot in slots}
    # The duplicate slot: one fragment before the one acting on the job a key points to
    # (a debounce), one after it (duplicate.lua).
    for when, before in (("before", "true"), ("after", "false")):
        text = _read("duplicate").replace("@BEFORE@", before)
        frags[f"duplicate-{when}"] = text.replace("@PRELUDE@", prelude)
    return frags


def script(name: str, default_concurrency: int, default_max_size: int, count: bool) -> str:
    """The source of one of the feature's scripts (``SCRIPTS``) for these declarations."""
    if name not in SCRIPTS:
        raise KeyError(name)
    prelude = _prelude(default_concurrency, default_max_size, count)
    return _read(name).replace("@PRELUDE@", prelude)
